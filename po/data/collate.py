"""Batch tokenized pairs for one policy forward: B chosen rows then B rejected rows, right-padded.

`response_mask[i, t]` is 1 where `input_ids[i, t]` is a response token; prompt and padding are 0.
"""

from __future__ import annotations

from typing import Any

import torch


class PairCollator:
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


def carried_columns(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Per-pair values every layout passes through: row ids and the optional annotator and weight columns."""
    out = {"row_ids": torch.tensor([e["row_id"] for e in examples], dtype=torch.long)}
    for key in ("annotator", "weight"):
        if key in examples[0]:
            out[key] = torch.tensor([e[key] for e in examples])
    return out
