"""Normalize a raw row to a preference pair: prompt, chosen, rejected, each a string or a list of chat messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from po.errors import DataError

Text = str | list[dict[str, str]]


@dataclass
class Pair:
    prompt: Text
    chosen: Text
    rejected: Text
    where: str
    extra: dict[str, Any] = field(default_factory=dict)


def to_pair(row: Mapping[str, Any], where: str, columns: Mapping[str, str], extra: Mapping[str, str] = {}) -> Pair:
    """Pick the mapped columns of `row`, checking types; `extra` maps batch names to carried columns."""
    values = {}
    for role in ("prompt", "chosen", "rejected"):
        col = columns.get(role, role)
        if col not in row:
            have = ", ".join(sorted(row)) or "none"
            raise DataError(where, f"missing column (columns present: {have}); map it with data.columns.{role}=NAME", col)
        values[role] = _check_text(row[col], where, col, allow_empty=role == "prompt")
    carried = {}
    for key, col in extra.items():
        if col not in row:
            raise DataError(where, f"missing column named by the config for '{key}'", col)
        carried[key] = row[col]
    return Pair(values["prompt"], values["chosen"], values["rejected"], where, carried)


def _check_text(value: Any, where: str, col: str, allow_empty: bool) -> Text:
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise DataError(where, "empty response; remove the row or fill it", col)
        return value
    if isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value):
        if not value and not allow_empty:
            raise DataError(where, "empty message list", col)
        for m in value:
            if not isinstance(m["content"], str):
                raise DataError(where, f"message content must be a string, got {type(m['content']).__name__}", col)
        if not allow_empty and not "".join(m["content"] for m in value).strip():
            raise DataError(where, "empty response; remove the row or fill it", col)
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(
        where, f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}", col
    )
