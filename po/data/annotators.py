"""Annotator ids for per-annotator weighting (LCPO): a data column mapped to indices 0..K-1 at data load.

`weighting.annotator_column=NAME` names the column. `po-train` then carries it into the batch as `annotator`
(`data.extra_columns.annotator`); `po.data` maps the training split's ids to indices (sorted as strings, so the map is the same
on every rank and every run), maps held-out ids the training split never had to -1 (the weighting then uses the
mean reliability), tells the weighting how many annotators there are, and saves the map as `annotators.json`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from po.atomic import write_json_atomic

UNSEEN = -1
MAP_FILE = "annotators.json"


def use_annotator_column(cfg: DictConfig) -> None:
    """Carry `weighting.annotator_column` into the batch as the `annotator` extra column (idempotent)."""
    column = cfg.weighting.get("annotator_column")
    if column:
        with open_dict(cfg):
            cfg.data.extra_columns = cfg.data.get("extra_columns") or {}
            cfg.data.extra_columns.annotator = column


def configure_weighting(cfg: DictConfig, mapping: dict[str, int] | None, run_dir: Path | None = None) -> None:
    """Give the weighting the annotator count and names from the data; save the map beside the run."""
    if not cfg.weighting.get("annotator_column") or mapping is None:
        return
    with open_dict(cfg):
        cfg.weighting.num_annotators = len(mapping)
        cfg.weighting.annotator_names = list(mapping)
    if run_dir is not None:
        write_json_atomic(Path(run_dir) / MAP_FILE, mapping)
