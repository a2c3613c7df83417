"""Tokenize a pair once: chat template rendered once, no doubled BOS/EOS, one EOS ending each response.

Strings: the prompt gets the tokenizer's own special tokens (BOS where it adds one); responses get none, plus EOS.
Messages: the conversation is rendered by the chat template; the prompt part includes the assistant generation
prompt, and the response is the rendered text that follows it (it already carries the template's end-of-turn).
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


def tokenize_pair(pair: Pair, tokenizer) -> TokenizedPair:
    if isinstance(pair.prompt, list) or isinstance(pair.chosen, list):
        return _tokenize_chat(pair, tokenizer)
    prompt_ids = tokenizer(pair.prompt, add_special_tokens=True)["input_ids"] if pair.prompt else _bos(tokenizer)
    return TokenizedPair(prompt_ids, _response_ids(pair.chosen, tokenizer), _response_ids(pair.rejected, tokenizer))


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _response_ids(text: str, tokenizer) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids


def _as_messages(text: Text, role: str) -> list[dict[str, str]]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def _tokenize_chat(pair: Pair, tokenizer) -> TokenizedPair:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(pair.where, "chat messages need a tokenizer with a chat template; this one has none")
    prompt_msgs = _as_messages(pair.prompt, "user")
    prompt_text = tokenizer.apply_chat_template(prompt_msgs, add_generation_prompt=True, tokenize=False)
    responses = []
    for role in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(
            prompt_msgs + _as_messages(getattr(pair, role), "assistant"), tokenize=False
        )
        if not full.startswith(prompt_text):
            raise DataError(
                pair.where, "the chat template renders the prompt differently inside the conversation", role
            )
        responses.append(_response_ids(full[len(prompt_text):].rstrip(), tokenizer))
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    return TokenizedPair(prompt_ids, *responses)


def truncate(tp: TokenizedPair, max_length: int, max_prompt_length: int | None) -> TokenizedPair | None:
    """Keep the prompt's end and each response's start within `max_length`; None if no response token fits."""
    prompt = tp.prompt_ids
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
    budget = max_length - len(prompt)
    if budget < 1:
        return None
    return TokenizedPair(prompt, tp.chosen_ids[:budget], tp.rejected_ids[:budget])
