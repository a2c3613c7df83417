"""Turn one raw row of any supported preference format into a `Pair` (prompt, chosen, rejected), or a drop reason.

Formats (`data.format`, detected per row when `auto`):
- explicit: `prompt`, `chosen`, `rejected` columns; strings or chat message lists. When chosen/rejected are full
  conversations (their first message is not the assistant's), the prompt is taken from them as in `implicit`.
- implicit: no prompt column; `chosen` and `rejected` are full conversations (message lists, or Anthropic-HH text
  "\\n\\nHuman: ... \\n\\nAssistant: ...") and the prompt is their longest common prefix ending at a turn boundary.
- ultrafeedback: like explicit with full conversations, plus `score_chosen`/`score_rejected`, filtered by
  `data.min_score_margin`.
- ranked: a prompt and a list of K >= 2 `responses` (strings or message lists) with `scores` (numbers, higher =
  better; K may vary per row). Becomes a `RankedList`. Equal scores tie: a tie forms no pair, and a list whose kept
  responses all tie is dropped (`all_tied`). A response with a null or NaN score, or an empty or undecodable text, is
  dropped from its list and counted (`dropped_responses`; the list stays if two responses with different scores are
  left).
- ultrafeedback_raw: UltraFeedback as released (`instruction`, `completions` of {response, overall_score,
  fine-grained_score, annotations: {aspect: {Rating}}}); the score used is `data.ultrafeedback_score` (overall_score,
  fine-grained_score, or an aspect: helpfulness, honesty, instruction_following, truthfulness; a rating "N/A" drops
  that response). Becomes a `RankedList`.
- helpsteer2: HelpSteer2-Preference's shape (`prompt`, `response_1`, `response_2`, `preference_strength` in -3..3,
  negative = response_1 better). Becomes a pair; the magnitude |strength| goes to the per-pair signal named by
  `data.strength_as` (weight or margin; null = not used). Strength 0 is a tie: dropped (`all_tied`).
Column names go through `data.columns` (role -> column), so any other layout maps onto these.

Per-pair signal columns (`data.extra_columns.weight/margin/confidence`): a number per row (per list for ranked rows);
a string is an error, a null or NaN drops the row, a weight below 0 or a confidence outside [0, 1] is an error.

Structural faults (missing column, wrong type, no shared prompt) raise `DataError`: the file is wrong. Row-content
faults that real data sets contain return a `Dropped` reason, with the column it was found in, that the report
counts (and `data.strict=true` turns into an error): a null cell or null message content, an empty response, a NaN
or infinite score or weight, text that is not valid UTF-8 (an undecodable byte, read as a lone surrogate, or a
lone surrogate escaped in JSON), a message role the chat template does not know (`roles`, given by the caller that
knows the tokenizer), responses that differ only in surrounding whitespace, and a score margin below the filter.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from po.data.pairs import Pair, RankedList, Text
from po.errors import DataError

FORMATS = ("auto", "explicit", "implicit", "ultrafeedback", "ranked", "ultrafeedback_raw", "helpsteer2")
LIST_FORMATS = ("ranked", "ultrafeedback_raw")
UF_SCORES = ("overall_score", "fine-grained_score", "helpfulness", "honesty", "instruction_following", "truthfulness")
STRENGTH_AS = ("weight", "margin")
HH_ASSISTANT = "\n\nAssistant:"

# Drop reasons: the report's issue classes decided at normalization time (po/data/report.py names them).
EMPTY = "empty"
MALFORMED = "malformed"
LOW_MARGIN = "low_margin"
NOT_FINITE = "not_finite"
BAD_TEXT = "bad_text"
UNKNOWN_ROLE = "unknown_role"
WHITESPACE_ONLY = "whitespace_only"
ALL_TIED = "all_tied"
TOO_FEW = "too_few"


@dataclass
class FormatOptions:
    """The parts of the `data` group that decide how a row becomes a pair."""

    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    extra_columns: dict[str, str] = field(default_factory=dict)
    min_score_margin: float | None = None
    ultrafeedback_score: str = "overall_score"
    strength_as: str | None = None

    def col(self, role: str) -> str:
        return self.columns.get(role) or role


@dataclass
class Dropped:
    reason: str  # one of the drop reasons above
    where: str
    detail: str = ""
    field: str | None = None  # the column the fault was found in


class _Drop(Exception):
    """Raised by the checks below to stop normalizing a row; `normalize_row` returns its `Dropped`."""

    def __init__(self, reason: str, where: str, field: str | None, detail: str):
        self.dropped = Dropped(reason, where, detail, field)


def normalize_row(row: Mapping[str, Any], where: str, opts: FormatOptions,
                  roles: frozenset[str] | None = None) -> Pair | RankedList | Dropped:
    """The pair or ranked list that `row` holds in `opts.format`, or why it is dropped; raises `DataError` for a
    wrong file.

    `roles`: the message roles the chat template knows (po.data.prepare.template_roles); None = not checked."""
    fmt = opts.format if opts.format != "auto" else detect_format(row, opts)
    if fmt in LIST_FORMATS or fmt == "helpsteer2":
        try:
            return {"ranked": _ranked, "ultrafeedback_raw": _ultrafeedback_raw, "helpsteer2": _helpsteer2}[fmt](
                row, where, opts, roles)
        except _Drop as drop:
            return drop.dropped
    needed = ["chosen", "rejected"] + (["prompt"] if fmt == "explicit" else [])
    if fmt == "ultrafeedback":
        needed += ["score_chosen", "score_rejected"]
    for role in needed:
        if opts.col(role) not in row:
            have = ", ".join(sorted(row)) or "none"
            raise DataError(where, f"missing column for data.format={fmt} (columns present: {have}); "
                                   f"map it with data.columns.{role}=NAME", opts.col(role))
    try:
        return _normalize(row, where, opts, fmt, needed, roles)
    except _Drop as drop:
        return drop.dropped


def _normalize(row: Mapping[str, Any], where: str, opts: FormatOptions, fmt: str, needed: list[str],
               roles: frozenset[str] | None) -> Pair:
    for role in ("prompt", "chosen", "rejected"):
        if role in needed and row[opts.col(role)] is None:
            raise _Drop(MALFORMED, where, opts.col(role), "null value")
    extra = _extras(row, where, opts)
    if fmt == "ultrafeedback":  # the scores define which response is chosen: a NaN one means no label
        margin = _score(row, "score_chosen", where, opts) - _score(row, "score_rejected", where, opts)
        if opts.min_score_margin is not None and margin < opts.min_score_margin:
            raise _Drop(LOW_MARGIN, where, None, f"score margin {margin:g}")
    chosen = _text(row[opts.col("chosen")], where, opts.col("chosen"), roles)
    rejected = _text(row[opts.col("rejected")], where, opts.col("rejected"), roles)
    if fmt != "implicit" and not _is_conversation(chosen):
        prompt = _text(row[opts.col("prompt")], where, opts.col("prompt"), roles)
        pair = Pair(prompt, chosen, rejected, where, extra)
    else:
        pair = split_conversations(chosen, rejected, where, opts)
        pair.extra = extra
    texts = {role: _content(getattr(pair, role)) for role in ("chosen", "rejected")}
    for role, text in texts.items():
        if not text.strip():
            raise _Drop(EMPTY, where, opts.col(role), "empty response")
    if texts["chosen"] != texts["rejected"] and texts["chosen"].strip() == texts["rejected"].strip():
        raise _Drop(WHITESPACE_ONLY, where, opts.col("rejected"), "differs from chosen only in whitespace")
    return pair


def detect_format(row: Mapping[str, Any], opts: FormatOptions) -> str:
    """ranked with a responses column, ultrafeedback_raw with completions, helpsteer2 with response_1/response_2 and
    a preference_strength; else ultrafeedback if scores are present, explicit if a prompt column is, else implicit."""
    if opts.col("responses") in row:
        return "ranked"
    if opts.col("completions") in row:
        return "ultrafeedback_raw"
    if all(opts.col(c) in row for c in ("response_1", "response_2", "preference_strength")):
        return "helpsteer2"
    if opts.col("prompt") not in row:
        return "implicit"
    if opts.col("score_chosen") in row and opts.col("score_rejected") in row:
        return "ultrafeedback"
    return "explicit"


def _require(row: Mapping[str, Any], where: str, opts: FormatOptions, fmt: str, roles_needed: tuple[str, ...]):
    for role in roles_needed:
        if opts.col(role) not in row:
            have = ", ".join(sorted(row)) or "none"
            raise DataError(where, f"missing column for data.format={fmt} (columns present: {have}); "
                                   f"map it with data.columns.{role}=NAME", opts.col(role))


def _number(value: Any, where: str, col: str, what: str) -> float:
    """A finite number, or: a string/bool/list is the file's error; a null or NaN drops (counted)."""
    if value is None:
        raise _Drop(MALFORMED, where, col, f"null {what}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(where, f"a {what} must be a number, got {type(value).__name__}", col)
    if not math.isfinite(value):
        raise _Drop(NOT_FINITE, where, col, f"{what} {value}")
    return float(value)


def _ranked_list(prompt: Text, candidates: list[tuple[Any, Any, str, str]], where: str, opts: FormatOptions,
                 roles: frozenset[str] | None, extra: dict[str, Any]) -> RankedList:
    """Keep each (text, score) whose text and score are usable; the others are dropped responses (their field)."""
    responses, scores, dropped = [], [], []
    for text, score, text_col, score_col in candidates:
        try:
            value = _number(score, where, score_col, "score")
            if text is None:
                raise _Drop(MALFORMED, where, text_col, "null response")
            response = _text(text, where, text_col, roles)
            if not _content(response).strip():
                raise _Drop(EMPTY, where, text_col, "empty response")
        except _Drop as drop:
            dropped.append(drop.dropped.field or text_col)
            continue
        responses.append(response)
        scores.append(value)
    if len(responses) < 2 or len(set(scores)) < 2:
        field = dropped[0] if dropped and len(responses) < 2 else opts.col("scores")
        raise _Drop(ALL_TIED if len(responses) >= 2 else TOO_FEW, where, field,
                    "every response ties" if len(responses) >= 2 else "fewer than two usable responses")
    return RankedList(prompt, responses, scores, where, extra, dropped)


def _ranked(row: Mapping[str, Any], where: str, opts: FormatOptions, roles: frozenset[str] | None) -> RankedList:
    _require(row, where, opts, "ranked", ("prompt", "responses", "scores"))
    rcol, scol = opts.col("responses"), opts.col("scores")
    responses, scores = row[rcol], row[scol]
    if not isinstance(responses, list):
        raise DataError(where, f"expected a list of responses, got {type(responses).__name__}", rcol)
    if not isinstance(scores, list) or len(scores) != len(responses):
        got = f"{len(scores)} scores" if isinstance(scores, list) else type(scores).__name__
        raise DataError(where, f"expected a list of {len(responses)} scores (one per response), got {got}", scol)
    if len(responses) < 2:
        raise DataError(where, f"a ranked row needs at least 2 responses, got {len(responses)}", rcol)
    if row[opts.col("prompt")] is None:
        raise _Drop(MALFORMED, where, opts.col("prompt"), "null value")
    extra = _extras(row, where, opts)
    prompt = _text(row[opts.col("prompt")], where, opts.col("prompt"), roles)
    candidates = [(t, s, f"{rcol}[{i}]", f"{scol}[{i}]") for i, (t, s) in enumerate(zip(responses, scores))]
    return _ranked_list(prompt, candidates, where, opts, roles, extra)


def _ultrafeedback_raw(row: Mapping[str, Any], where: str, opts: FormatOptions,
                       roles: frozenset[str] | None) -> RankedList:
    _require(row, where, opts, "ultrafeedback_raw", ("instruction", "completions"))
    ccol = opts.col("completions")
    completions = row[ccol]
    if not isinstance(completions, list) or not all(isinstance(c, Mapping) for c in completions):
        raise DataError(where, "expected a list of completion objects {response, overall_score, annotations}", ccol)
    if row[opts.col("instruction")] is None:
        raise _Drop(MALFORMED, where, opts.col("instruction"), "null value")
    extra = _extras(row, where, opts)
    prompt = _text(row[opts.col("instruction")], where, opts.col("instruction"), roles)
    aspect = opts.ultrafeedback_score
    candidates = []
    for i, c in enumerate(completions):
        if aspect in ("overall_score", "fine-grained_score"):
            score, score_col = c.get(aspect), f"{ccol}[{i}].{aspect}"
        else:
            rating = ((c.get("annotations") or {}).get(aspect) or {}).get("Rating")
            score_col = f"{ccol}[{i}].annotations.{aspect}.Rating"
            try:
                score = None if rating in (None, "N/A") else float(rating)
            except (TypeError, ValueError):
                raise DataError(where, f"a rating must be a number or 'N/A', got {rating!r}", score_col) from None
        candidates.append((c.get("response"), score, f"{ccol}[{i}].response", score_col))
    return _ranked_list(prompt, candidates, where, opts, roles, extra)


def _helpsteer2(row: Mapping[str, Any], where: str, opts: FormatOptions, roles: frozenset[str] | None) -> Pair:
    _require(row, where, opts, "helpsteer2", ("prompt", "response_1", "response_2", "preference_strength"))
    col = opts.col("preference_strength")
    strength = _number(row[col], where, col, "preference strength")
    if not -3 <= strength <= 3:
        raise DataError(where, f"a preference strength must be in -3..3 (negative: response_1 is better), got "
                               f"{row[col]!r}", col)
    if strength == 0:
        raise _Drop(ALL_TIED, where, col, "strength 0: no preference")
    for role in ("prompt", "response_1", "response_2"):
        if row[opts.col(role)] is None:
            raise _Drop(MALFORMED, where, opts.col(role), "null value")
    extra = _extras(row, where, opts)
    if opts.strength_as:
        extra[opts.strength_as] = abs(strength)
    first, second = (opts.col("response_1"), opts.col("response_2"))
    chosen_col, rejected_col = (first, second) if strength < 0 else (second, first)
    prompt = _text(row[opts.col("prompt")], where, opts.col("prompt"), roles)
    chosen = _text(row[chosen_col], where, chosen_col, roles)
    rejected = _text(row[rejected_col], where, rejected_col, roles)
    for c, text in ((chosen_col, chosen), (rejected_col, rejected)):
        if not _content(text).strip():
            raise _Drop(EMPTY, where, c, "empty response")
    return Pair(prompt, chosen, rejected, where, extra)


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


def _text(value: Any, where: str, col: str, roles: frozenset[str] | None) -> Text:
    if isinstance(value, str):
        _check_utf8(value, where, col)
        return value
    if isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value):
        for m in value:
            for key in ("role", "content"):
                if m[key] is None:
                    raise _Drop(MALFORMED, where, col, f"null message {key}")
                if not isinstance(m[key], str):
                    raise DataError(where, f"message {key} must be a string, got {type(m[key]).__name__}", col)
                _check_utf8(m[key], where, col)
            if roles is not None and m["role"] not in roles:
                raise _Drop(UNKNOWN_ROLE, where, col, f"role {m['role']!r}")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(where, f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}",
                    col)


def _check_utf8(text: str, where: str, col: str) -> None:
    """Bytes that are not UTF-8 arrive as lone surrogates (read with errors='surrogateescape'), as do JSON
    escapes such as "\\ud800": neither can be encoded, so no tokenizer can take them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Drop(BAD_TEXT, where, col, f"not UTF-8 at character {exc.start}") from None


def _score(row: Mapping[str, Any], role: str, where: str, opts: FormatOptions) -> float:
    value = row[opts.col(role)]
    if value is None:
        raise _Drop(MALFORMED, where, opts.col(role), "null score")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(where, f"expected a number, got {type(value).__name__}", opts.col(role))
    if not math.isfinite(value):
        raise _Drop(NOT_FINITE, where, opts.col(role), f"score {value}")
    return float(value)


# Per-pair signal columns and their allowed ranges (losses/base.py: WEIGHT, MARGIN, CONFIDENCE).
SIGNAL_COLUMNS = {"weight": (0.0, math.inf), "margin": (-math.inf, math.inf), "confidence": (0.0, 1.0)}


def _extras(row: Mapping[str, Any], where: str, opts: FormatOptions) -> dict[str, Any]:
    carried = {}
    for key, col in opts.extra_columns.items():
        if col not in row:
            raise DataError(where, f"missing column named by data.extra_columns.{key}", col)
        value = row[col]
        if key in SIGNAL_COLUMNS:
            value = _number(value, where, col, f"per-pair {key}")
            low, high = SIGNAL_COLUMNS[key]
            if not low <= value <= high:
                raise DataError(where, f"a per-pair {key} must be in [{low:g}, {high:g}], got {value:g}", col)
        if key == "annotator" and not isinstance(value, (str, int)):
            raise DataError(where, f"an annotator id must be a string or an integer, got {type(value).__name__}",
                            col)
        carried[key] = value
    return carried
