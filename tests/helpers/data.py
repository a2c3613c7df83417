"""Helpers for the data tests: write a small file, load it through the real config and the shipped tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from po.data.load import PreferenceData, load_preference_data
from po.models.tokenizer import load_tiny_tokenizer
from tests.helpers.runs import compose_cfg

TOK = load_tiny_tokenizer()


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def load(path: Path, *overrides: str, seed: int = 0) -> PreferenceData:
    """`po-train data=jsonl data.path=PATH OVERRIDES` up to the data, with a cache folder beside the file."""
    cfg = compose_cfg(["data=jsonl", f"data.path={path}", "data.eval_fraction=0",
                       f"data.cache_dir={Path(path).parent / 'cache'}", *overrides])
    return load_preference_data(cfg.data, TOK, seed)
