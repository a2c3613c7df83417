"""Turn one raw row of any supported preference format into a `Pair` (prompt, chosen, rejected), or a drop reason.

Formats (`data.format`, detected per row when `auto`):
- explicit: `prompt`, `chosen`, `rejected` columns; strings or chat message lists. When chosen/rejected are full
  conversations (their first message is not the assistant's), the prompt is taken from them as in `implicit`.
- implicit: no prompt column; `chosen` and `rejected` are full conversations (message lists, or Anthropic-HH text
  "\\n\\nHuman: ... \\n\\nAssistant: ...") and the prompt is their longest common prefix ending at a turn boundary.
- ultrafeedback: like explicit with full conversations, plus `score_chosen`/`score_rejected`, filtered by
  `data.min_score_margin`.
Column names go through `data.columns` (role -> column), so any other layout maps onto these.

Structural faults (missing column, wrong type, no shared prompt) raise `DataError`: the file is wrong. Row-content
faults that real data sets contain (null cell, empty response, small score margin) return a `Dropped` reason that
the report counts (and `data.strict=true` turns into an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from po.data.pairs import Pair, Text
from po.errors import DataError

FORMATS = ("auto", "explicit", "implicit", "ultrafeedback")
HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"

# Drop reasons: the report's issue classes decided at normalization time.
EMPTY = "empty"
MALFORMED = "malformed"
LOW_MARGIN = "low_margin"


@dataclass
class FormatOptions:
    """The parts of the `data` group that decide how a row becomes a pair."""

    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    extra_columns: dict[str, str] = field(default_factory=dict)
    min_score_margin: float | None = None

    def col(self, role: str) -> str:
        return self.columns.get(role) or role


@dataclass
class Dropped:
    reason: str  # EMPTY | MALFORMED | LOW_MARGIN
    where: str
    detail: str = ""


def normalize_row(row: Mapping[str, Any], where: str, opts: FormatOptions) -> Pair | Dropped:
    """The pair that `row` holds in `opts.format`, or why it is dropped; raises `DataError` for a wrong file."""
    fmt = opts.format if opts.format != "auto" else detect_format(row, opts)
    needed = ["chosen", "rejected"] + (["prompt"] if fmt == "explicit" else [])
    if fmt == "ultrafeedback":
        needed += ["score_chosen", "score_rejected"]
    for role in needed:
        if opts.col(role) not in row:
            have = ", ".join(sorted(row)) or "none"
            raise DataError(where, f"missing column for data.format={fmt} (columns present: {have}); "
                                   f"map it with data.columns.{role}=NAME", opts.col(role))
    for role in ("prompt", "chosen", "rejected"):
        if role in needed and row[opts.col(role)] is None:
            return Dropped(MALFORMED, where, f"null value in '{opts.col(role)}'")
    extra = _extras(row, where, opts)
    if fmt == "ultrafeedback" and opts.min_score_margin is not None:
        margin = _number(row, "score_chosen", where, opts) - _number(row, "score_rejected", where, opts)
        if margin < opts.min_score_margin:
            return Dropped(LOW_MARGIN, where, f"score margin {margin:g}")
    chosen = _text(row[opts.col("chosen")], where, opts.col("chosen"))
    rejected = _text(row[opts.col("rejected")], where, opts.col("rejected"))
    if fmt != "implicit" and not _is_conversation(chosen):
        prompt = _text(row[opts.col("prompt")], where, opts.col("prompt"))
        pair = Pair(prompt, chosen, rejected, where, extra)
    else:
        pair = split_conversations(chosen, rejected, where, opts)
        pair.extra = extra
    for role in ("chosen", "rejected"):
        if not _content(getattr(pair, role)).strip():
            return Dropped(EMPTY, where, f"empty '{opts.col(role)}'")
    return pair


def detect_format(row: Mapping[str, Any], opts: FormatOptions) -> str:
    """ultrafeedback if scores are present, explicit if a prompt column is, else implicit."""
    if opts.col("prompt") not in row:
        return "implicit"
    if opts.col("score_chosen") in row and opts.col("score_rejected") in row:
        return "ultrafeedback"
    return "explicit"


def split_conversations(chosen: Text, rejected: Text, where: str, opts: FormatOptions) -> Pair:
    """Prompt = the longest common prefix of two full conversations that ends where the assistant's turn starts."""
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise DataError(where, "chosen and rejected must both be message lists or both be text",
                        opts.col("rejected"))
    if isinstance(chosen, str):
        return _split_hh_text(chosen, rejected, where, opts)
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    # Back off to a turn boundary where both continue with an assistant message.
    while k > 0 and not (k < len(chosen) and k < len(rejected)
                         and chosen[k]["role"] == rejected[k]["role"] == "assistant"):
        k -= 1
    if k == 0:
        raise DataError(where, "chosen and rejected share no prompt: they must start with the same messages and "
                               "then each continue with an assistant turn (or give a prompt column)",
                        opts.col("chosen"))
    return Pair(chosen[:k], chosen[k:], rejected[k:], where)


def _split_hh_text(chosen: str, rejected: str, where: str, opts: FormatOptions) -> Pair:
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(where, "chosen and rejected share no prompt ending at an Anthropic-HH '\\n\\nAssistant:' "
                               "turn; give a prompt column (data.format=explicit) or full conversations",
                        opts.col("chosen"))
    end = cut + len(HH_ASSISTANT)
    return Pair(chosen[:end], chosen[end:], rejected[end:], where)


def _is_conversation(value: Text) -> bool:
    return isinstance(value, list) and bool(value) and value[0]["role"] != "assistant"


def _content(value: Text) -> str:
    return value if isinstance(value, str) else "".join(m["content"] for m in value)


def _text(value: Any, where: str, col: str) -> Text:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value):
        for m in value:
            if not isinstance(m["content"], str):
                raise DataError(where, f"message content must be a string, got {type(m['content']).__name__}", col)
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(where, f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}",
                    col)


def _number(row: Mapping[str, Any], role: str, where: str, opts: FormatOptions) -> float:
    value = row[opts.col(role)]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(where, f"expected a number, got {type(value).__name__}", opts.col(role))
    return float(value)


def _extras(row: Mapping[str, Any], where: str, opts: FormatOptions) -> dict[str, Any]:
    carried = {}
    for key, col in opts.extra_columns.items():
        if col not in row:
            raise DataError(where, f"missing column named by data.extra_columns.{key}", col)
        value = row[col]
        if key == "weight" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(where, f"a per-pair weight must be a number, got {type(value).__name__}", col)
        if key == "annotator" and not isinstance(value, (str, int)):
            raise DataError(where, f"an annotator id must be a string or an integer, got {type(value).__name__}",
                            col)
        carried[key] = value
    return carried
