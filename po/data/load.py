"""Preference data, from the `data` group to train and held-out sets: read, normalize, tokenize (cached), split, mix,
and report what was dropped.

Flow: sources (po/data/sources.py) -> every row normalized and tokenized once per source (po/data/prepare.py, with
po/data/formats.py and po/data/tokenize.py) -> train/eval split and mixture weights by row index -> validation
report and length statistics (po/data/quality.py) -> `datasets.Dataset`s of prompt_ids, chosen_ids, rejected_ids,
row_id and carried columns (annotator, weight), batched by po/data/collate.py.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from losses.base import UNSEEN_ANNOTATOR
from po.data.options import Source, check_data_config, sources_of
from po.data.prepare import tokenize_source
from po.data.quality import DataReport, length_stats, strict_error
from po.data.sources import read_rows
from po.errors import POError

log = logging.getLogger(__name__)

INTERNAL_COLUMNS = ["status", "field", "where", "truncated", "extra", "dropped_responses", "tied"]
LIST_COLUMNS = ["response_ids", "scores"]  # kept when the data holds ranked lists (`PreferenceData.lists`)


@dataclass
class PreferenceData:
    train: Any  # datasets.Dataset with prompt_ids, chosen_ids, rejected_ids, row_id (+ annotator, weight)
    eval: Any | None
    reports: dict[str, DataReport]
    wheres: dict[str, list[str]] = field(default_factory=dict)  # split -> source location of each row_id
    # annotator id (as a string) -> index 0..K-1, from the training split (sorted), when an annotator column is
    # carried; held-out ids the training split never had become -1 (LCPO then uses the mean reliability).
    annotator_ids: dict[str, int] | None = None
    # True when either split holds ranked lists: every row then has response_ids and scores (empty for a pair row,
    # which po.data.list_collate's collators make a list of two: chosen scored 1, rejected 0).
    lists: bool = False


def _weighted(indices: list[int], weight: float, rng: random.Random) -> list[int]:
    """Weight 1 = every row once, 0.5 = a random half, 2.5 = every row twice plus a random half."""
    whole, frac = int(weight), weight - int(weight)
    return indices * whole + sorted(rng.sample(indices, int(round(frac * len(indices)))))


def _prepare(src: Source, rows, tokenizer, cfg: DictConfig):
    return tokenize_source(rows, src.opts, tokenizer, cfg.max_length, cfg.get("max_prompt_length"),
                           num_proc=cfg.get("num_proc"), cache_dir=cfg.get("cache_dir"),
                           use_cache=cfg.get("cache", True))


def _select_sources(cfg: DictConfig, tokenizer, seed: int,
                    carry: dict[str, str] | None) -> tuple[dict[str, list], dict[str, set]]:
    """Per split, the (tokenized table, row indices) of every source, and the cache states seen."""
    parts: dict[str, list] = {"train": [], "eval": []}
    caches: dict[str, set] = {"train": set(), "eval": set()}
    for src in sources_of(cfg, carry):
        rows = read_rows(src.path, src.name, src.split)
        if src.max_rows:
            rows = rows[: src.max_rows]
        table, cache = _prepare(src, rows, tokenizer, cfg)
        caches["train"].add(cache)
        train_idx = list(range(len(table)))
        if src.eval_path or src.eval_split:
            eval_rows = read_rows(src.eval_path or src.path, src.name, src.eval_split or "train")
            eval_table, eval_cache = _prepare(src, eval_rows, tokenizer, cfg)
            parts["eval"].append((eval_table, list(range(len(eval_table)))))
            caches["eval"].add(eval_cache)
        elif src.eval_fraction > 0:
            order = list(range(len(table)))
            random.Random(seed).shuffle(order)
            n_eval = max(1, int(round(len(table) * src.eval_fraction)))
            held = set(order[:n_eval])
            parts["eval"].append((table, [i for i in train_idx if i in held]))
            train_idx = [i for i in train_idx if i not in held]
            caches["eval"].add(cache)
        parts["train"].append((table, _weighted(train_idx, src.weight, random.Random(seed))))
    return parts, caches


def _build_split(parts: list, cache_states: set) -> tuple[Any, DataReport, list[str]]:
    """The kept rows of one split as a Dataset, its report, and each kept row's location."""
    import datasets
    import pyarrow.compute as pc

    report = DataReport(cache="miss" if "miss" in cache_states else ("hit" if "hit" in cache_states else ""))
    if not parts or not any(idx for _, idx in parts):
        return None, report, []
    table = datasets.concatenate_datasets([t.select(idx) for t, idx in parts if idx])
    columns = table.select_columns(["status", "field", "where", "truncated", "dropped_responses", "tied",
                                    "scores"]).to_dict()  # plain lists: fast to scan
    status, wheres, truncated = columns["status"], columns["where"], columns["truncated"]
    sizes = [len(s) for s in columns["scores"]]  # responses per list (0: a pair)
    report.rows = len(table)
    kept = []
    for i, (s, where) in enumerate(zip(status, wheres)):
        if s:
            getattr(report, s).append(where)
            if columns["field"][i]:
                report.fields[where] = columns["field"][i]
            continue
        kept.append(i)
        if truncated[i]:
            report.truncated.append(where)
        if columns["dropped_responses"][i]:
            report.dropped_responses.append(where)
            report.fields.setdefault(where, columns["dropped_responses"][i][0])
        if columns["tied"][i]:
            report.tied.append(where)
        if sizes[i]:
            report.list_sizes[sizes[i]] = report.list_sizes.get(sizes[i], 0) + 1
    report.kept = len(kept)
    if not kept:
        return None, report, []
    table = table.select(kept).flatten_indices()
    report.lengths = length_stats(*(pc.list_value_length(table.data.column(name)).to_pylist()
                                    for name in ("prompt_ids", "chosen_ids", "rejected_ids")))
    return table, report, [wheres[i] for i in kept]


def _finish(table, extras: list[dict[str, Any]], annotator_ids: dict[str, int] | None, lists: bool):
    """Drop internal columns (and the list columns of pair data); add row_id and the carried columns (annotator as
    an integer id)."""
    table = table.remove_columns(INTERNAL_COLUMNS + ([] if lists else LIST_COLUMNS))
    table = table.add_column("row_id", list(range(len(table))))
    for key in sorted({k for e in extras for k in e}):
        values = [e.get(key) for e in extras]
        if key == "annotator" and annotator_ids is not None:
            values = [annotator_ids.get(str(v), UNSEEN_ANNOTATOR) for v in values]
        elif key in ("weight", "margin", "confidence"):
            if any(v is None for v in values):  # a mixture where one source has the column and another not
                raise POError(f"data.extra_columns.{key}: some sources have no {key} column; give it to every source")
            values = [float(v) for v in values]
        table = table.add_column(key, values)
    return table


def load_preference_data(cfg: DictConfig, tokenizer, seed: int, carry: dict[str, str] | None = None) -> PreferenceData:
    """Build the train and held-out sets that `cfg` (the `data` group) describes; log the validation report.

    `carry`: extra columns another group asks for, e.g. {"annotator": "labeler"} for `weighting.annotator_column`
    (merged with `data.extra_columns`; the config is not changed)."""
    import datasets

    check_data_config(cfg)
    parts, caches = _select_sources(cfg, tokenizer, seed, carry)
    bars = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # only the tokenizing bar is worth showing
    try:
        return _assemble(cfg, parts, caches)
    finally:
        if not bars:
            datasets.utils.enable_progress_bars()


def _assemble(cfg: DictConfig, parts: dict[str, list], caches: dict[str, set]) -> PreferenceData:
    splits, reports, wheres, extras = {}, {}, {}, {}
    for split in ("train", "eval"):
        splits[split], reports[split], wheres[split] = _build_split(parts[split], caches[split])
        extras[split] = [json.loads(e) for e in splits[split].data.column("extra").to_pylist()] \
            if splits[split] is not None else []
        if split == "train" or reports[split].rows:
            for line in reports[split].lines(split):
                log.info(line)
    if cfg.get("strict"):
        error = strict_error(reports)
        if error is not None:
            raise error
    annotator_ids = None
    if any("annotator" in e for e in extras["train"]):
        names = sorted({str(e["annotator"]) for e in extras["train"]})
        annotator_ids = {name: i for i, name in enumerate(names)}
    lists = any(reports[split].list_sizes for split in ("train", "eval"))
    for split in ("train", "eval"):
        if splits[split] is not None:
            splits[split] = _finish(splits[split], extras[split], annotator_ids, lists)
    if splits["train"] is None:
        where = cfg.get("path") or "data.mixture"
        raise POError(f"data.path={where}: no usable training pairs left (see the data report above)")
    return PreferenceData(splits["train"], splits["eval"], reports, wheres, annotator_ids, lists)

