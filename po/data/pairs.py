"""A preference pair: prompt, chosen, rejected, each a string or a list of chat messages (po/data/formats.py makes
them from raw rows)."""

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
