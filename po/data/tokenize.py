"""Tokenize a pair once: chat template rendered once, one BOS at most, one end token ending each response.

Strings: the prompt gets the tokenizer's own leading special tokens (BOS where it adds one, never a trailing EOS);
responses get none, then EOS.
Messages: the conversation is rendered by the chat template; the prompt part ends with the assistant generation
prompt, and the response is the rendered text that follows it, without the whitespace the template writes after
the turn. Rendered text is tokenized without special tokens, so a BOS the template writes is not doubled; if the
template writes none but the tokenizer normally adds one, it is prepended.
An empty prompt still gets one start token (BOS, else EOS) so that the first response token has a context.

End-of-turn convention: po trains on the assistant's content plus the template's end-of-turn token, and nothing
after it. The model must learn to emit the stop token; text a template puts after it is never generated. Per family:

| family | the template renders | po trains on |
|---|---|---|
| Llama-3 | `content<|eot_id|>` | `content<|eot_id|>` |
| Qwen2 / ChatML | `content<|im_end|>\n` | `content<|im_end|>` (the newline is dropped) |
| Mistral | `content</s>` | `content</s>` |
| a template that ends turns with plain text | `content` | `content` + EOS |

A response that already ends in a special token (EOS or any added special token) gets no EOS after it. What is cut
after the turn is whitespace only: a template that writes other text after the last turn (e.g. an EOS closing the
whole conversation) keeps it.
tests/unit/data/test_data_templates.py pins these ids; tests/unit/losses/test_trl_parity.py pins how TRL's trainers differ (DPOTrainer
keeps ChatML's newline, CPOTrainer adds `<|im_end|>` after it again).
"""

from __future__ import annotations

from dataclasses import dataclass

from po.data.pairs import Pair, Text
from po.errors import DataError


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts before text with `add_special_tokens=True` (e.g. [BOS]; [] for Qwen2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def end_of_turn_ids(tokenizer) -> set[int]:
    """Special tokens that may end a rendered response: EOS and every added special token (end-of-turn markers)."""
    ids = set(tokenizer.all_special_ids)
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    for not_an_end in (tokenizer.bos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id):
        if not_an_end != tokenizer.eos_token_id:
            ids.discard(not_an_end)
    return ids


def tokenize_pair(pair: Pair, tokenizer, leading: list[int] | None = None) -> TokenizedPair:
    """Prompt and response ids of `pair`; `leading` = `leading_special_ids(tokenizer)` (computed if None)."""
    leading = leading_special_ids(tokenizer) if leading is None else leading
    if isinstance(pair.prompt, list) or isinstance(pair.chosen, list):
        tp = _tokenize_chat(pair, tokenizer, leading)
    else:
        prompt_ids = leading + tokenizer(pair.prompt, add_special_tokens=False)["input_ids"] if pair.prompt \
            else list(leading)
        tp = TokenizedPair(prompt_ids, _response_ids(pair.chosen, tokenizer), _response_ids(pair.rejected, tokenizer))
    if not tp.prompt_ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        tp.prompt_ids = [start] if start is not None else []
    return tp


def _response_ids(text: str, tokenizer, ends: set[int] | None = None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = ends if ends is not None else {tokenizer.eos_token_id}
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] not in ends):
        ids.append(tokenizer.eos_token_id)
    return ids


def _as_messages(text: Text, role: str) -> list[dict[str, str]]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def _tokenize_chat(pair: Pair, tokenizer, leading: list[int]) -> TokenizedPair:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(pair.where, "chat messages need a tokenizer with a chat template; this one has none")
    prompt_msgs = _as_messages(pair.prompt, "user") if pair.prompt else []
    prompt_text = _render(tokenizer, prompt_msgs, pair.where, add_generation_prompt=True)
    ends = end_of_turn_ids(tokenizer)
    responses = []
    for role in ("chosen", "rejected"):
        full = _render(tokenizer, prompt_msgs + _as_messages(getattr(pair, role), "assistant"), pair.where)
        if not full.startswith(prompt_text):
            raise DataError(
                pair.where, "the chat template renders the prompt differently inside the conversation", role
            )
        responses.append(_response_ids(full[len(prompt_text):].rstrip(), tokenizer, ends))
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if leading and prompt_ids[:len(leading)] != leading:
        prompt_ids = leading + prompt_ids
    return TokenizedPair(prompt_ids, *responses)


def _render(tokenizer, messages: list[dict[str, str]], where: str, add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as exc:  # jinja's own errors (e.g. "roles must alternate") are one line; keep them
        raise DataError(where, f"the chat template cannot render this row: {str(exc).splitlines()[0]}") from exc


def truncate(tp: TokenizedPair, max_length: int, max_prompt_length: int | None) -> TokenizedPair | None:
    """Keep the prompt's end and each response's start within `max_length`; None if no response token fits."""
    prompt = tp.prompt_ids
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
    budget = max_length - len(prompt)
    if budget < 1:
        return None
    return TokenizedPair(prompt, tp.chosen_ids[:budget], tp.rejected_ids[:budget])
