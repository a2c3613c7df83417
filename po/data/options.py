"""Read the `data` config group: the sources to load (one, or a weighted mixture) and their format options.

`check_data_config` runs inside `po.config.validate`, so a bad `data.*` value fails before any model loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from po.data.formats import FORMATS, STRENGTH_AS, UF_SCORES, FormatOptions
from po.errors import ConfigError

# Keys a `data.mixture` entry may set; the others are inherited from the `data` group.
MIXTURE_KEYS = {"path", "weight", "name", "split", "eval_path", "eval_split", "eval_fraction", "max_rows", "format",
                "columns", "extra_columns", "min_score_margin", "ultrafeedback_score", "strength_as"}
PAIR_MODES = ("all", "best")  # data.list_pairs (losses.base.PAIR_MODES)
PER_SOURCE_ONLY = {"path", "weight", "name", "split", "eval_path", "eval_split"}  # not inherited from the group


@dataclass
class Source:
    """One source of rows and how to read it."""

    path: str
    name: str | None
    split: str
    eval_path: str | None
    eval_split: str | None
    eval_fraction: float
    max_rows: int | None
    weight: float
    opts: FormatOptions


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or OmegaConf.is_config(node) \
        else node


def format_options(values: dict[str, Any]) -> FormatOptions:
    columns = {k: v for k, v in (values.get("columns") or {}).items() if v}
    extra = {k: v for k, v in (values.get("extra_columns") or {}).items() if v}
    margin = values.get("min_score_margin")
    return FormatOptions(values.get("format") or "auto", columns, extra, None if margin is None else float(margin),
                         values.get("ultrafeedback_score") or "overall_score", values.get("strength_as") or None)


def sources_of(cfg: DictConfig, carry: dict[str, str] | None = None) -> list[Source]:
    """The top-level source, or the `data.mixture` entries (each inheriting the group's format options).

    `carry`: batch name -> column of extra columns another group asks for (the weighting's annotator column), added
    to `data.extra_columns`; the `data` config itself is never changed."""
    group = _plain(cfg)
    if carry:
        group["extra_columns"] = {**(group.get("extra_columns") or {}), **carry}
    entries = group.get("mixture") or [{"path": group.get("path"), "weight": 1.0, "name": group.get("name"),
                                         "split": group.get("split"), "eval_path": group.get("eval_path"),
                                         "eval_split": group.get("eval_split")}]
    out = []
    for entry in entries:
        values = {k: v for k, v in group.items() if k not in PER_SOURCE_ONLY} | entry
        out.append(Source(
            path=str(values["path"]), name=values.get("name"), split=values.get("split") or "train",
            eval_path=values.get("eval_path"), eval_split=values.get("eval_split"),
            eval_fraction=float(values.get("eval_fraction") or 0), max_rows=values.get("max_rows"),
            weight=float(values.get("weight", 1.0)), opts=format_options(values),
        ))
    return out


def check_data_config(cfg: DictConfig) -> None:
    """One-line `ConfigError` for a bad `data.*` value."""
    fmt = cfg.get("format") or "auto"
    if fmt not in FORMATS:
        raise ConfigError(f"data.format={fmt}: use one of {', '.join(FORMATS)}")
    mixture = cfg.get("mixture")
    if mixture is not None:
        if not OmegaConf.is_list(mixture) or not mixture:
            raise ConfigError("data.mixture must be a list of sources, e.g. "
                              "data.mixture='[{path:a.jsonl,weight:1},{path:b.jsonl,weight:0.5}]'")
        for i, entry in enumerate(mixture):
            if not OmegaConf.is_dict(entry) or not entry.get("path"):
                raise ConfigError(f"data.mixture[{i}] needs a path: {{path: FILE_OR_ID, weight: W}}")
            unknown = set(entry) - MIXTURE_KEYS
            if unknown:
                raise ConfigError(f"data.mixture[{i}].{sorted(unknown)[0]} is not a mixture key; "
                                  f"use {', '.join(sorted(MIXTURE_KEYS))}")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
                raise ConfigError(f"data.mixture[{i}].weight={weight}: must be a number > 0, and finite "
                                  "(1 = every row once, 0.5 = a random half, 2 = every row twice)")
            if (entry.get("format") or "auto") not in FORMATS:
                raise ConfigError(f"data.mixture[{i}].format={entry.get('format')}: use one of {', '.join(FORMATS)}")
    elif not cfg.get("path"):
        raise ConfigError("data.path is not set: give a file, folder or dataset id (or data.mixture=[...])")
    fraction = cfg.get("eval_fraction") or 0
    if not 0 <= fraction < 1:
        raise ConfigError(f"data.eval_fraction={fraction}: must be in [0, 1)")
    margin = cfg.get("min_score_margin")
    if margin is not None and not isinstance(margin, (int, float)):
        raise ConfigError(f"data.min_score_margin={margin}: must be a number (or null for no filter)")
    score = cfg.get("ultrafeedback_score") or "overall_score"
    if score not in UF_SCORES:
        raise ConfigError(f"data.ultrafeedback_score={score}: use one of {', '.join(UF_SCORES)}")
    strength = cfg.get("strength_as")
    if strength is not None and strength not in STRENGTH_AS:
        raise ConfigError(f"data.strength_as={strength}: use one of {', '.join(STRENGTH_AS)} (or null: not used)")
    if strength is not None and (cfg.get("extra_columns") or {}).get(strength):
        raise ConfigError(f"data.strength_as={strength} and data.extra_columns.{strength} both set the per-pair "
                          f"{strength}; keep one")
    pairs = cfg.get("list_pairs") or "all"
    if pairs not in PAIR_MODES:
        raise ConfigError(f"data.list_pairs={pairs}: use one of {', '.join(PAIR_MODES)}")
    num_proc = cfg.get("num_proc")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ConfigError(f"data.num_proc={num_proc}: must be a positive integer (or null for one process)")
