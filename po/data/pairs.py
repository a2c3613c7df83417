"""A preference pair (prompt, chosen, rejected) or a ranked list (prompt, K responses, scores), each text a string or
a list of chat messages (po/data/formats.py makes them from raw rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Text = str | list[dict[str, str]]


@dataclass
class Pair:
    prompt: Text
    chosen: Text
    rejected: Text
    where: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankedList:
    """One prompt and K >= 2 responses with scores (higher = better; equal scores tie and form no pair).

    `dropped`: the fields of responses this row had that were dropped (a null or NaN score, an empty or bad text),
    counted by the data report; `ties`: True when two kept responses share a score."""

    prompt: Text
    responses: list[Text]
    scores: list[float]
    where: str
    extra: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    @property
    def ties(self) -> bool:
        return len(set(self.scores)) < len(self.scores)
