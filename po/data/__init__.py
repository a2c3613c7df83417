"""Preference data: read rows, normalize to pairs, tokenize once, split, and report what was dropped."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from po.annotators import index_annotators
from po.data.collate import PairCollator
from po.data.pairs import Pair, to_pair
from po.data.sources import read_rows
from po.data.tokenize import tokenize_pair, truncate

log = logging.getLogger(__name__)

__all__ = ["PairCollator", "PreferenceData", "load_preference_data", "tokenize_rows"]


@dataclass
class DataReport:
    """Counts of pairs kept and dropped, with the first offending rows, for the log and `summary.json`."""

    rows: int = 0
    kept: int = 0
    dropped_length: list[str] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)

    def lines(self, split: str) -> list[str]:
        out = [f"data[{split}]: {self.kept} pairs kept of {self.rows} rows"]
        for name, wheres in (("dropped: no response token fits max_length", self.dropped_length),
                             ("dropped: chosen identical to rejected", self.identical)):
            if wheres:
                out.append(f"data[{split}]: {name}: {len(wheres)} (first: {', '.join(wheres[:3])})")
        return out

    def as_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "kept": self.kept, "dropped_length": len(self.dropped_length),
                "identical": len(self.identical)}


@dataclass
class PreferenceData:
    train: Any  # datasets.Dataset with prompt_ids, chosen_ids, rejected_ids, row_id
    eval: Any | None
    reports: dict[str, DataReport]
    annotators: dict[str, int] | None = None  # annotator id -> index (from the training split), when carried


def tokenize_rows(pairs: list[Pair], tokenizer, max_length: int, max_prompt_length: int | None,
                  report: DataReport) -> list[dict[str, Any]]:
    """Tokenize and truncate pairs, dropping (and counting) those with no room or identical responses."""
    out = []
    report.rows += len(pairs)
    for pair in tqdm(pairs, desc="tokenizing", disable=len(pairs) < 2000, leave=False):
        tp = truncate(tokenize_pair(pair, tokenizer), max_length, max_prompt_length)
        if tp is None:
            report.dropped_length.append(pair.where)
            continue
        if tp.chosen_ids == tp.rejected_ids:
            report.identical.append(pair.where)
            continue
        out.append({"prompt_ids": tp.prompt_ids, "chosen_ids": tp.chosen_ids, "rejected_ids": tp.rejected_ids,
                    "row_id": len(out), **pair.extra})
    report.kept += len(out)
    return out


def load_preference_data(cfg: DictConfig, tokenizer, seed: int) -> PreferenceData:
    """Build the train and held-out sets that `cfg` (the `data` group) describes."""
    import datasets

    columns = OmegaConf.to_container(cfg.columns, resolve=True) if cfg.get("columns") else {}
    extra = {k: v for k, v in (OmegaConf.to_container(cfg.get("extra_columns") or {}, resolve=True)).items() if v}

    def pairs_of(rows):
        return [to_pair(row, where, columns, extra) for row, where in rows]

    train_rows = read_rows(cfg.path, cfg.get("name"), cfg.get("split", "train"))
    if cfg.get("max_rows"):
        train_rows = train_rows[: cfg.max_rows]
    if cfg.get("eval_path") or cfg.get("eval_split"):
        eval_rows = read_rows(cfg.get("eval_path") or cfg.path, cfg.get("name"), cfg.get("eval_split") or "train")
    elif cfg.get("eval_fraction", 0) > 0:
        order = list(range(len(train_rows)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(round(len(train_rows) * cfg.eval_fraction)))
        held = set(order[:n_eval])
        eval_rows = [r for i, r in enumerate(train_rows) if i in held]
        train_rows = [r for i, r in enumerate(train_rows) if i not in held]
    else:
        eval_rows = []

    reports = {"train": DataReport(), "eval": DataReport()}
    splits = {}
    annotators = None
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        if not rows:
            splits[split] = None
            continue
        records = tokenize_rows(pairs_of(rows), tokenizer, cfg.max_length, cfg.get("max_prompt_length"),
                                reports[split])
        annotators = index_annotators(records, annotators)
        for line in reports[split].lines(split):
            log.info(line)
        splits[split] = datasets.Dataset.from_list(records) if records else None
    if splits["train"] is None:
        from po.errors import POError

        raise POError(f"data.path={cfg.path}: no usable training pairs left (see the data report above)")
    return PreferenceData(splits["train"], splits["eval"], reports, annotators)
