"""Chat templates applied once: one BOS, one end token per response, and the ids decode to the template's rendering.

Three template styles are built offline (a tiny BPE from po.models.tokenizer with the special tokens and chat template of
each family): Llama-3 (BOS in the template, <|eot_id|> ends turns), Qwen2 (no BOS, <|im_end|> ends turns,
a default system turn), Mistral ([INST] ... [/INST], </s> after the answer), plus the shipped tiny tokenizer.
"""

from __future__ import annotations

import pytest

from po.data.pairs import Pair
from po.data.tokenize import tokenize_pair
from po.models.tokenizer import load_tiny_tokenizer
from tests.helpers.templates import LLAMA3, styled_tokenizer

PROMPT = [{"role": "user", "content": "Tell me about rivers."}]
CHOSEN = [{"role": "assistant", "content": "Rivers flow to the sea."}]
REJECTED = [{"role": "assistant", "content": "No."}]
# Per family: the token that ends an assistant turn, and the text the template renders after it.
END_OF_TURN = {"llama3": ("<|eot_id|>", ""), "qwen2": ("<|im_end|>", "\n"), "mistral": ("</s>", "")}


@pytest.mark.parametrize("style", ["llama3", "qwen2", "mistral", "tiny"])
def test_no_doubled_special_tokens(style):
    tok = load_tiny_tokenizer() if style == "tiny" else styled_tokenizer(style)
    tp = tokenize_pair(Pair(PROMPT, CHOSEN, REJECTED, "t"), tok)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if bos is None:  # Qwen2: no BOS anywhere
        assert tok.convert_tokens_to_ids("<s>") not in tp.prompt_ids
    else:
        assert tp.prompt_ids[0] == bos and tp.prompt_ids.count(bos) == 1
    for response, messages in ((tp.chosen_ids, CHOSEN), (tp.rejected_ids, REJECTED)):
        assert response[-1] == eos and response.count(eos) == 1, tok.convert_ids_to_tokens(response)
        # The ids are the template's rendering, applied once: nothing added, nothing lost.
        rendered = tok.apply_chat_template(PROMPT + messages, tokenize=False)
        assert tok.decode(tp.prompt_ids + response, skip_special_tokens=False) == rendered.rstrip()
    assert eos not in tp.chosen_ids[:-1]
    # The generation prompt belongs to the prompt part.
    generation = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert tok.decode(tp.prompt_ids, skip_special_tokens=False) == generation


@pytest.mark.parametrize("style", sorted(END_OF_TURN))
def test_response_is_the_content_and_the_end_of_turn_token(style):
    """po's convention: a response is the assistant's content plus the template's end-of-turn token, and nothing
    after it (the model must learn to stop; what the template writes after the stop token is never generated).
    Llama-3: content<|eot_id|>; Qwen2 / ChatML: content<|im_end|> (the template's "\n" after it is dropped);
    Mistral: content</s>. The ids are pinned literally."""
    tok = styled_tokenizer(style)
    end, after = END_OF_TURN[style]
    rendered = tok.apply_chat_template(PROMPT + CHOSEN, tokenize=False)
    assert rendered.endswith(CHOSEN[0]["content"] + end + after)   # what the family's template renders
    tp = tokenize_pair(Pair(PROMPT, CHOSEN, REJECTED, "t"), tok)
    end_id = tok.convert_tokens_to_ids(end)
    for response, messages in ((tp.chosen_ids, CHOSEN), (tp.rejected_ids, REJECTED)):
        assert response == tok(messages[0]["content"], add_special_tokens=False)["input_ids"] + [end_id]


def test_template_without_bos_gets_the_tokenizer_bos_once():
    """A Llama-3 tokenizer whose template omits {{ bos_token }}: the tokenizer's usual BOS is prepended, once."""
    tok = styled_tokenizer("llama3")
    tok.chat_template = LLAMA3.replace("{{ bos_token }}", "")
    tp = tokenize_pair(Pair(PROMPT, CHOSEN, REJECTED, "t"), tok)
    assert tp.prompt_ids[0] == tok.bos_token_id and tp.prompt_ids.count(tok.bos_token_id) == 1


def test_shipped_tokenizer_expected_ids():
    """Issue 2: the shipped template gives <s><|user|>\\n...</s><|assistant|>\\n | answer</s>, ids checked literally."""
    tok = load_tiny_tokenizer()
    tp = tokenize_pair(Pair(PROMPT, CHOSEN, REJECTED, "t"), tok)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    bos, eos, user, assistant = (tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<|user|>", "<|assistant|>"))
    assert tp.prompt_ids == [bos, user] + ids("\nTell me about rivers.") + [eos, assistant] + ids("\n")
    assert tp.chosen_ids == ids("Rivers flow to the sea.") + [eos]
    assert tp.rejected_ids == ids("No.") + [eos]


def test_string_pairs_get_bos_once_and_eos_per_response():
    """Plain strings: the tokenizer's BOS before the prompt (never EOS after it), EOS after each response."""
    for style in ("llama3", "qwen2"):
        tok = styled_tokenizer(style)
        tp = tokenize_pair(Pair("Tell me about rivers.", "Rivers flow.", "No.", "t"), tok)
        plain = tok("Tell me about rivers.", add_special_tokens=False)["input_ids"]
        assert tp.prompt_ids == ([tok.bos_token_id] if style == "llama3" else []) + plain
        assert tp.chosen_ids == tok("Rivers flow.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
