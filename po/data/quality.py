"""The validation report of one split: counts per issue class with the first offending rows (and the column a drop
was found in), and length statistics.

Printed before training (and by `po-data`), stored in `summary.json` under `data`. With `data.strict=true` any
issue class with a non-zero count is an error (`strict_error`); the score-margin filter and truncation are what
the user asked for, so they are reported but never errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from po.errors import DataError

# (attribute, line text, counts as an issue under data.strict)
CLASSES = (
    ("malformed", "dropped, malformed row (null value in a used column)", True),
    ("empty", "dropped, empty response", True),
    ("not_finite", "dropped, score or weight not a finite number (NaN or infinite)", True),
    ("bad_text", "dropped, text not valid UTF-8 (undecodable byte or lone surrogate)", True),
    ("unknown_role", "dropped, message role not known to the chat template", True),
    ("whitespace_only", "dropped, chosen and rejected differ only in surrounding whitespace", True),
    ("identical", "dropped, chosen identical to rejected (after truncation)", True),
    ("dropped_length", "dropped, no response token fits data.max_length", True),
    ("too_few", "dropped, a list with fewer than two usable responses", True),
    ("all_tied", "dropped, every response ties (no preference; ties form no pair)", True),
    ("dropped_responses", "responses dropped from a list (null or NaN score, empty or bad text; the list kept)", True),
    ("tied", "lists with tied responses (kept; a tie forms no pair)", False),
    ("low_margin", "filtered, score margin below data.min_score_margin", False),
    ("truncated", "truncated to data.max_length (kept)", False),
)
SHOW_FIRST = 3


@dataclass
class DataReport:
    """Counts of pairs kept and dropped, with the first offending rows, for the log and `summary.json`."""

    rows: int = 0
    kept: int = 0
    dropped_length: list[str] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    not_finite: list[str] = field(default_factory=list)
    bad_text: list[str] = field(default_factory=list)
    unknown_role: list[str] = field(default_factory=list)
    whitespace_only: list[str] = field(default_factory=list)
    low_margin: list[str] = field(default_factory=list)
    all_tied: list[str] = field(default_factory=list)
    too_few: list[str] = field(default_factory=list)
    dropped_responses: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    list_sizes: dict[int, int] = field(default_factory=dict)  # ranked lists: responses per prompt -> lists kept
    truncated: list[str] = field(default_factory=list)
    lengths: dict[str, Any] = field(default_factory=dict)
    cache: str = ""  # "hit", "miss" or "" (not cached)
    fields: dict[str, str] = field(default_factory=dict)  # row location -> the column a drop was found in

    def lines(self, split: str) -> list[str]:
        """One summary line, one line per issue class, one line of length statistics."""
        cache = f"; tokenized data: cache {self.cache}" if self.cache else ""
        unit = "pairs" if not self.list_sizes else "lists" if sum(self.list_sizes.values()) == self.kept else "rows"
        out = [f"data[{split}]: {self.kept} {unit} kept of {self.rows} rows{cache}"]
        for attr, text, _ in CLASSES:
            wheres = getattr(self, attr)
            first = f" (first: {first_rows(wheres, self.fields)})" if wheres else ""
            out.append(f"data[{split}]:   {text}: {len(wheres)}{first}")
        if self.list_sizes:
            sizes = ", ".join(f"{k}: {n}" for k, n in sorted(self.list_sizes.items()))
            out.append(f"data[{split}]:   ranked lists kept: {sum(self.list_sizes.values())} (responses per prompt: "
                       f"{sizes})")
        if self.lengths:
            out.append(f"data[{split}]: {format_lengths(self.lengths)}")
        return out

    def as_dict(self) -> dict[str, Any]:
        counts = {attr: len(getattr(self, attr)) for attr, _, _ in CLASSES}
        lists = {"list_sizes": {str(k): n for k, n in sorted(self.list_sizes.items())}} if self.list_sizes else {}
        return {"rows": self.rows, "kept": self.kept, **counts, **lists, "lengths": self.lengths}

    def issues(self) -> list[tuple[str, list[str]]]:
        return [(text, getattr(self, attr)) for attr, text, is_issue in CLASSES if is_issue and getattr(self, attr)]


def strict_error(reports: dict[str, DataReport]) -> DataError | None:
    """The error `data.strict=true` raises: the first issue class found, with its count and first rows."""
    for split, report in reports.items():
        for text, wheres in report.issues():
            return DataError(wheres[0], f"data.strict=true and {len(wheres)} {split} row(s) {text.split(', ', 1)[1]} "
                                        f"(first: {first_rows(wheres, report.fields)}); fix the data, or set "
                                        "data.strict=false to drop and count them", report.fields.get(wheres[0]))
    return None


def first_rows(wheres: list[str], fields: dict[str, str] | None = None, n: int = SHOW_FIRST) -> str:
    """'a.jsonl line 3, line 9 field 'chosen', line 12': the source is named once while it stays the same, and the
    column a drop was found in follows its row."""
    shown, last_source = [], None
    for where in wheres[:n]:
        match = re.fullmatch(r"(.*) ((?:line|row|item) \d+)", where)
        source, at = (match.group(1), match.group(2)) if match else (where, "")
        column = (fields or {}).get(where)
        shown.append((at if source == last_source and at else where) + (f" field '{column}'" if column else ""))
        last_source = source
    return ", ".join(shown) + (", ..." if len(wheres) > n else "")


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {"mean": round(float(values.mean()), 2), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "max": float(values.max())}


def length_stats(prompt: list[int], chosen: list[int], rejected: list[int]) -> dict[str, Any]:
    """Token-length statistics of kept pairs (after truncation): what the loss sees. Length bias shows in `diff`."""
    p, c, r = (np.asarray(x, dtype=np.float64) for x in (prompt, chosen, rejected))
    if p.size == 0:
        return {}
    diff = c - r
    return {
        "prompt": _stats(p),
        "response": _stats(np.concatenate([c, r])),
        "chosen": _stats(c),
        "rejected": _stats(r),
        "chosen_minus_rejected": {"mean": round(float(diff.mean()), 2), "p50": float(np.percentile(diff, 50)),
                                  "p5": float(np.percentile(diff, 5)), "p95": float(np.percentile(diff, 95)),
                                  "chosen_longer_fraction": round(float((diff > 0).mean()), 4)},
    }


def format_lengths(lengths: dict[str, Any]) -> str:
    def one(name: str) -> str:
        s = lengths[name]
        return f"{name} mean {s['mean']:.1f} p50 {s['p50']:.0f} p95 {s['p95']:.0f} max {s['max']:.0f}"

    d = lengths["chosen_minus_rejected"]
    return (f"tokens: {one('prompt')}; {one('response')}; chosen-rejected mean {d['mean']:+.1f} "
            f"p50 {d['p50']:+.0f} (p5 {d['p5']:+.0f}, p95 {d['p95']:+.0f}), chosen longer in "
            f"{100 * d['chosen_longer_fraction']:.0f}% of pairs")
