"""Batches of ranked lists (`PreferenceData.lists`), in the two row layouts po/step/list_layouts.py reads back.

A list is one prompt `P` and K responses `y_1..y_K` with scores; a pair row of list data is a list of two (chosen
scored 1, rejected 0). K varies per list: `present [B, K]` marks the responses a list has, `scores [B, K]` their
scores (0 where absent).

`ListCollator`, the plain layout: one row `[P | y_k]` per present response, right-padded; `list_slots [N, 2]` says
which (list, response) each row is.
`PackedListCollator`, one row per list: `[P[:-1] | P[-1] y_1 | P[-1] y_2 | ... | P[-1] y_K]`, the prompt computed
once, the generalization of the packed pair row (po/data/collate.py): each response's part starts with a copy of the
last prompt token (so shift-by-one targets score its first token), its position ids continue from the prompt's end,
and the 4D mask built from `list_bounds` lets it see the prompt and itself only.

A worked example: pad id 0, one list {"prompt_ids": [1, 5], "response_ids": [[7, 2], [8, 8, 2], [9, 2]],
"scores": [2, 0, 1]}
ListCollator ->
    input_ids [[1, 5, 7, 2, 0], [1, 5, 8, 8, 2], [1, 5, 9, 2, 0]]   list_slots [[0, 0], [0, 1], [0, 2]]
PackedListCollator ->
    input_ids    [[1, 5, 7, 2, 5, 8, 8, 2, 5, 9, 2]]
    position_ids [[0, 1, 2, 3, 1, 2, 3, 4, 1, 2, 3]]
    list_bounds  [[1, 4, 8, 11]]   (the start of each response's part, at its copy of P[-1], then the row length;
                                     an absent response's part starts at the row length: it is empty)
Both: scores [[2., 0., 1.]], present [[True, True, True]], row_ids, and the carried columns (po/data/collate.py).
"""

from __future__ import annotations

from typing import Any

import torch

from losses.base import PRESENT, SCORES
from po.data.collate import carried_columns

LIST_BOUNDS = "list_bounds"  # present in a batch = packed list rows; [B, K + 1]
LIST_SLOTS = "list_slots"    # present in a batch = plain list rows; [N, 2] = (list, response)


def is_list_batch(inputs: dict[str, Any]) -> bool:
    return SCORES in inputs and PRESENT in inputs


def list_of(example: dict[str, Any]) -> tuple[list[list[int]], list[float]]:
    """The responses and scores of a list-data example; a pair row is a list of two."""
    if example.get("response_ids"):
        return [list(r) for r in example["response_ids"]], [float(s) for s in example["scores"]]
    return [list(example["chosen_ids"]), list(example["rejected_ids"])], [1.0, 0.0]


def scores_and_present(lists: list[tuple[list[list[int]], list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(len(r) for r, _ in lists)
    scores = torch.zeros(len(lists), k, dtype=torch.float32)
    present = torch.zeros(len(lists), k, dtype=torch.bool)
    for i, (_, s) in enumerate(lists):
        scores[i, :len(s)] = torch.tensor(s)
        present[i, :len(s)] = True
    return scores, present


class ListCollator:
    """One row `[P | y_k]` per present response (see the module docstring)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lists = [list_of(e) for e in examples]
        rows = [(i, k, e["prompt_ids"], r) for i, (e, (rs, _)) in enumerate(zip(examples, lists))
                for k, r in enumerate(rs)]
        width = max(len(p) + len(r) for _, _, p, r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for j, (_, _, prompt, response) in enumerate(rows):
            n = len(prompt) + len(response)
            input_ids[j, :n] = torch.tensor(list(prompt) + response)
            attention_mask[j, :n] = 1
            response_mask[j, len(prompt):n] = True
        scores, present = scores_and_present(lists)
        slots = torch.tensor([(i, k) for i, k, _, _ in rows], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
                LIST_SLOTS: slots, SCORES: scores, PRESENT: present, **carried_columns(examples)}


class PackedListCollator:
    """One row per list (see the module docstring); the plain layout for a batch with an empty prompt."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.plain = ListCollator(pad_token_id)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if any(len(e["prompt_ids"]) == 0 for e in examples):
            return self.plain(examples)
        lists = [list_of(e) for e in examples]
        k_max = max(len(r) for r, _ in lists)
        lengths = [len(e["prompt_ids"]) - 1 + sum(1 + len(r) for r in rs) for e, (rs, _) in zip(examples, lists)]
        b, width = len(examples), max(lengths)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, width), dtype=torch.long)
        position_ids = torch.zeros((b, width), dtype=torch.long)
        response_mask = torch.zeros((b, width), dtype=torch.bool)
        bounds = torch.zeros((b, k_max + 1), dtype=torch.long)
        for i, (e, (responses, _)) in enumerate(zip(examples, lists)):
            p = list(e["prompt_ids"])
            ids, start = p[:-1], len(p) - 1
            position_ids[i, :start] = torch.arange(start)
            for k, r in enumerate(responses):
                bounds[i, k] = start
                position_ids[i, start:start + 1 + len(r)] = torch.arange(len(p) - 1, len(p) + len(r))
                response_mask[i, start + 1:start + 1 + len(r)] = True
                ids += p[-1:] + r
                start += 1 + len(r)
            bounds[i, len(responses):] = start
            input_ids[i, :start] = torch.tensor(ids)
            attention_mask[i, :start] = 1
        scores, present = scores_and_present(lists)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "response_mask": response_mask, LIST_BOUNDS: bounds, SCORES: scores, PRESENT: present,
                **carried_columns(examples)}
