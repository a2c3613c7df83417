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

from po.data.pairs import Pair, RankedList, Text
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
    prompt_ids, (chosen, rejected) = tokenize_responses(pair.prompt, [pair.chosen, pair.rejected], pair.where,
                                                        tokenizer, leading)
    return TokenizedPair(prompt_ids, chosen, rejected)


def tokenize_list(ranked: RankedList, tokenizer, leading: list[int] | None = None) -> tuple[list[int], list[list[int]]]:
    """Prompt ids (rendered once) and the ids of each response of a ranked list, by the same rules as a pair's."""
    return tokenize_responses(ranked.prompt, ranked.responses, ranked.where, tokenizer, leading)


def tokenize_responses(prompt: Text, responses: list[Text], where: str, tokenizer,
                       leading: list[int] | None = None) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and each response's ids: the prompt is tokenized once, each response as its continuation."""
    leading = leading_special_ids(tokenizer) if leading is None else leading
    if isinstance(prompt, list) or any(isinstance(r, list) for r in responses):
        prompt_ids, response_ids = _tokenize_chat(prompt, responses, where, tokenizer, leading)
    else:
        prompt_ids = leading + tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else list(leading)
        response_ids = [_response_ids(r, tokenizer) for r in responses]
    if not prompt_ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prompt_ids = [start] if start is not None else []
    return prompt_ids, response_ids


def _response_ids(text: str, tokenizer, ends: set[int] | None = None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = ends if ends is not None else {tokenizer.eos_token_id}
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] not in ends):
        ids.append(tokenizer.eos_token_id)
    return ids


def _as_messages(text: Text, role: str) -> list[dict[str, str]]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def _tokenize_chat(prompt: Text, responses: list[Text], where: str, tokenizer,
                   leading: list[int]) -> tuple[list[int], list[list[int]]]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(where, "chat messages need a tokenizer with a chat template; this one has none")
    prompt_msgs = _as_messages(prompt, "user") if prompt else []
    prompt_text = _render(tokenizer, prompt_msgs, where, add_generation_prompt=True)
    ends = end_of_turn_ids(tokenizer)
    out = []
    roles = ("chosen", "rejected") if len(responses) == 2 else tuple(f"responses[{i}]" for i in range(len(responses)))
    for role, response in zip(roles, responses):
        full = _render(tokenizer, prompt_msgs + _as_messages(response, "assistant"), where)
        if not full.startswith(prompt_text):
            raise DataError(where, "the chat template renders the prompt differently inside the conversation", role)
        out.append(_response_ids(full[len(prompt_text):].rstrip(), tokenizer, ends))
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if leading and prompt_ids[:len(leading)] != leading:
        prompt_ids = leading + prompt_ids
    return prompt_ids, out


def _render(tokenizer, messages: list[dict[str, str]], where: str, add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as exc:  # jinja's own errors (e.g. "roles must alternate") are one line; keep them
        raise DataError(where, f"the chat template cannot render this row: {str(exc).splitlines()[0]}") from exc


def truncate_list(prompt_ids: list[int], responses: list[list[int]], max_length: int,
                  max_prompt_length: int | None) -> tuple[list[int], list[list[int]]] | None:
    """`truncate` for a list: the prompt's end and each response's start within `max_length`."""
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length:]
    budget = max_length - len(prompt_ids)
    if budget < 1:
        return None
    return prompt_ids, [r[:budget] for r in responses]


def truncate(tp: TokenizedPair, max_length: int, max_prompt_length: int | None) -> TokenizedPair | None:
    """Keep the prompt's end and each response's start within `max_length`; None if no response token fits."""
    prompt = tp.prompt_ids
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
    budget = max_length - len(prompt)
    if budget < 1:
        return None
    return TokenizedPair(prompt, tp.chosen_ids[:budget], tp.rejected_ids[:budget])
