"""Batches of tokenized pairs, in the two row layouts a step takes (po/step/layouts.py reads them back).

`PairCollator`, the plain layout: B chosen rows then B rejected rows, each `prompt + response`, right-padded.
`PackedPairCollator`, one row per pair: `[P[:-1] | P[-1] C | P[-1] R]`, the prompt computed once (the last prompt
token is written twice so that ordinary shift-by-one targets score the first token of both responses).
`KeyedCollator` wraps either and adds each pair's content digest, the lookup key of `reference=cached`.

A worked example: pad id 0, two pairs
    {"prompt_ids": [1, 5, 6], "chosen_ids": [7, 8, 2], "rejected_ids": [9, 2], "row_id": 0}
    {"prompt_ids": [1, 5],    "chosen_ids": [3, 2],    "rejected_ids": [4, 4, 4, 2], "row_id": 1}

PairCollator ->
    input_ids      [[1, 5, 6, 7, 8, 2], [1, 5, 3, 2, 0, 0], [1, 5, 6, 9, 2, 0], [1, 5, 4, 4, 4, 2]]
    attention_mask [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    response_mask  [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]]  (bool)
    row_ids        [0, 1]
PackedPairCollator ->
    input_ids      [[1, 5, 6, 7, 8, 2, 6, 9, 2], [1, 5, 3, 2, 5, 4, 4, 4, 2]]
    attention_mask [[1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]]   (2D: real tokens, for counts)
    position_ids   [[0, 1, 2, 3, 4, 5, 2, 3, 4], [0, 1, 2, 3, 1, 2, 3, 4, 5]]   (rejected continues the prompt)
    response_mask  [[0, 0, 0, 1, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 1, 1, 1, 1]]
    pack_bounds    [[2, 6, 9], [1, 4, 9]]   (chosen_start, rejected_start, length; the 4D mask is built from it)
    row_ids        [0, 1]
Both carry `annotator`, `weight`, `margin` and `confidence` too when the data has them (`carried_columns`).
"""

from __future__ import annotations

from typing import Any

import torch

from losses.base import PRESENT
from po.fingerprint import pair_digest, response_digest

PACK_KEY = "pack_bounds"  # present in a batch = the batch is packed; [B, 3] = (chosen_start, rejected_start, length)


class PairCollator:
    """The plain layout: B chosen rows, then B rejected rows (see the module docstring)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
        rows += [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
        width = max(len(p) + len(r) for p, r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (prompt, response) in enumerate(rows):
            n = len(prompt) + len(response)
            input_ids[i, :n] = torch.tensor(prompt + response)
            attention_mask[i, :n] = 1
            response_mask[i, len(prompt):n] = True
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
        return {**batch, **carried_columns(examples)}


class PackedPairCollator:
    """One row per pair (see the module docstring). Falls back to the plain layout for a batch with an empty prompt.
    Whether a model computes this layout exactly is `po.step.layouts.packing_support`'s question."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.plain = PairCollator(pad_token_id)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if any(len(e["prompt_ids"]) == 0 for e in examples):
            return self.plain(examples)
        lengths = [len(e["prompt_ids"]) + len(e["chosen_ids"]) + 1 + len(e["rejected_ids"]) for e in examples]
        width = max(lengths)
        b = len(examples)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, width), dtype=torch.long)
        position_ids = torch.zeros((b, width), dtype=torch.long)
        response_mask = torch.zeros((b, width), dtype=torch.bool)
        bounds = torch.zeros((b, 3), dtype=torch.long)
        for i, e in enumerate(examples):
            p, c, r = e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]
            n = lengths[i]
            rs = len(p) + len(c)  # index of the duplicated last prompt token that starts the rejected part
            input_ids[i, :n] = torch.tensor(p + c + p[-1:] + r)
            attention_mask[i, :n] = 1
            position_ids[i, :rs] = torch.arange(rs)
            position_ids[i, rs:n] = torch.arange(len(p) - 1, len(p) + len(r))
            response_mask[i, len(p):rs] = True
            response_mask[i, rs + 1:n] = True
            bounds[i] = torch.tensor([len(p) - 1, rs, n])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                 "response_mask": response_mask, PACK_KEY: bounds}
        return {**batch, **carried_columns(examples)}


class KeyedCollator:
    """Wraps a pair or list collator and adds content digests so that cached values can be looked up: `pair_keys`
    `[B]` for pairs, `response_keys` `[B, K]` (prompt and response; 0 where absent) for ranked lists."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        if PRESENT in batch:  # ranked lists (po/data/list_collate.py): a pair row is a list of two
            keys = torch.zeros(batch["present"].shape, dtype=torch.int64)
            for i, e in enumerate(examples):
                responses = e.get("response_ids") or [e["chosen_ids"], e["rejected_ids"]]
                for k, response in enumerate(responses):
                    keys[i, k] = response_digest(e["prompt_ids"], response)
            batch["response_keys"] = keys
            return batch
        batch["pair_keys"] = torch.tensor([pair_digest(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"])
                                           for e in examples], dtype=torch.int64)
        return batch


def carried_columns(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Per-pair (per-list) values every layout passes through: row ids and the optional annotator and signal
    columns (weight, margin, confidence)."""
    out = {"row_ids": torch.tensor([e["row_id"] for e in examples], dtype=torch.long)}
    for key in ("annotator", "weight", "margin", "confidence"):
        if key in examples[0]:
            out[key] = torch.tensor([e[key] for e in examples])
    return out
