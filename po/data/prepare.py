"""Normalize and tokenize every row of one source once, and cache the result on disk for later runs.

The result is a `datasets.Dataset` with one row per source row: `prompt_ids`, `chosen_ids`, `rejected_ids`
(truncated to `max_length`), for a ranked list also `response_ids` and `scores` (K of each; chosen/rejected are then
its best and worst response, for length statistics), `dropped_responses` (fields) and `tied`; `status` ("" = kept,
else the report class that drops it), `field` (the column a drop was found in, or ""), `truncated`, `where` and
`extra` (carried columns as JSON). Splitting, mixing and the
report work on it by index, so a change of seed, split fraction or mixture weight reuses the cache.

Message roles are checked here, where the tokenizer is known: a role must be `system`, `user` or `assistant`, or
one the chat template itself compares a role with (`message['role'] == 'tool'`, `role in [...]`). A permissive
template would render a typo such as "asistant" as a new kind of turn; a strict one would fail on it.

Cache key: the rows (content and location), the tokenizer (vocabulary, special tokens, chat template), the
format options and the length limits. Folder: `data.cache_dir`, else `$PO_CACHE_DIR/tokenized`, else
`~/.cache/po/tokenized`. `data.cache=false` turns it off. Entries are verified on every read (po/data/cache.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from po.cache_dirs import TOKENIZED, cache_folder
from po.data import cache
from po.data.formats import Dropped, FormatOptions, normalize_row
from po.data.pairs import Pair, RankedList
from po.data.sources import Row
from po.data.tokenize import leading_special_ids, tokenize_list, tokenize_pair, truncate, truncate_list
from po.fingerprint import rows_fingerprint, tokenizer_fingerprint

# 3: ranked lists (response_ids, scores), signal columns; 2: NaN, UTF-8, role and whitespace checks, the `field`
# column, checksummed entries
CACHE_VERSION = "3"
# How many times rows were actually tokenized in this process (a cache hit leaves it unchanged); tests read it.
TOKENIZE_RUNS = 0


def default_cache_dir() -> Path:
    return cache_folder(None, TOKENIZED)


STANDARD_ROLES = frozenset({"system", "user", "assistant"})
# A quoted name compared with a role in a Jinja chat template: role == 'x', 'x' == message.role, role in ['x', 'y']
_ROLE_IS = re.compile(r"""role['"]?\]?\s*(?:==|!=)\s*['"]([^'"]+)['"]""")
_IS_ROLE = re.compile(r"""['"]([^'"]+)['"]\s*(?:==|!=)\s*[\w.]*(?:\[['"]role['"]\]|\.role\b|\brole\b)""")
_ROLE_IN = re.compile(r"""role['"]?\]?\s*(?:not\s+)?in\s*[\[(]([^\])]*)[\])]""")


def template_roles(tokenizer) -> frozenset[str]:
    """The message roles a row may use: system, user, assistant, and every role name the chat template compares
    a message's role with (e.g. 'tool' or 'ipython'; see the module docstring)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: a role any of them names is known
        template = "\n".join(str(t) for t in template.values())
    if not isinstance(template, str):
        return STANDARD_ROLES
    named = set(_ROLE_IS.findall(template)) | set(_IS_ROLE.findall(template))
    for listed in _ROLE_IN.findall(template):
        named |= set(re.findall(r"""['"]([^'"]+)['"]""", listed))
    return STANDARD_ROLES | named


class PairTokenizer:
    """The per-row function of `Dataset.map`: picklable, so `data.num_proc` processes can run it."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int | None):
        self.tokenizer, self.max_length, self.max_prompt_length = tokenizer, max_length, max_prompt_length
        self.leading = leading_special_ids(tokenizer)

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "response_ids": [], "scores": [],
               "truncated": False}
        if example["status"]:
            return out
        item = json.loads(example["pair"])
        if "responses" in item:
            return {**out, **self._list(RankedList(item["prompt"], item["responses"], item["scores"],
                                                   example["where"]))}
        pair = Pair(**item, where=example["where"])
        full = tokenize_pair(pair, self.tokenizer, self.leading)
        tp = truncate(full, self.max_length, self.max_prompt_length)
        if tp is None:
            return {**out, "status": "dropped_length"}
        if tp.chosen_ids == tp.rejected_ids:
            return {**out, "status": "identical"}
        truncated = (len(tp.prompt_ids), len(tp.chosen_ids), len(tp.rejected_ids)) != (
            len(full.prompt_ids), len(full.chosen_ids), len(full.rejected_ids))
        return {"prompt_ids": tp.prompt_ids, "chosen_ids": tp.chosen_ids, "rejected_ids": tp.rejected_ids,
                "response_ids": [], "scores": [], "truncated": truncated}

    def _list(self, ranked: RankedList) -> dict[str, Any]:
        prompt, responses = tokenize_list(ranked, self.tokenizer, self.leading)
        cut = truncate_list(prompt, responses, self.max_length, self.max_prompt_length)
        if cut is None:
            return {"status": "dropped_length"}
        truncated = len(cut[0]) != len(prompt) or any(len(a) != len(b) for a, b in zip(cut[1], responses))
        scores = ranked.scores
        best, worst = scores.index(max(scores)), scores.index(min(scores))
        return {"prompt_ids": cut[0], "chosen_ids": cut[1][best], "rejected_ids": cut[1][worst],
                "response_ids": cut[1], "scores": scores, "truncated": truncated}


def tokenize_source(rows: list[Row], opts: FormatOptions, tokenizer, max_length: int,
                    max_prompt_length: int | None, num_proc: int | None = None,
                    cache_dir: str | Path | None = None, use_cache: bool = True):
    """Every row of one source, normalized and tokenized (see the module docstring); returns (dataset, cache)."""
    import datasets

    settings = json.dumps([CACHE_VERSION, asdict(opts), max_length, max_prompt_length], sort_keys=True)
    key = hashlib.sha256(
        "|".join([rows_fingerprint(rows), tokenizer_fingerprint(tokenizer), settings]).encode()
    ).hexdigest()[:32]
    folder = Path(cache_dir or default_cache_dir()) / key
    if use_cache:
        table = cache.load(folder)
        if table is not None:
            return table, "hit"

    roles = template_roles(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    columns = {"pair": [], "status": [], "field": [], "where": [], "extra": [], "dropped_responses": [], "tied": []}
    for row, where in rows:
        result = normalize_row(row, where, opts, roles)
        dropped, tied = [], False
        if isinstance(result, Dropped):
            columns["pair"].append("")
            columns["status"].append(result.reason)
            columns["field"].append(result.field or "")
            columns["extra"].append("{}")
        else:
            if isinstance(result, RankedList):
                item = {"prompt": result.prompt, "responses": result.responses, "scores": result.scores}
                dropped, tied = result.dropped, result.ties
            else:
                item = {"prompt": result.prompt, "chosen": result.chosen, "rejected": result.rejected}
            columns["pair"].append(json.dumps(item))
            columns["status"].append("")
            columns["field"].append("")
            columns["extra"].append(json.dumps(result.extra))
        columns["where"].append(where)
        columns["dropped_responses"].append(dropped)
        columns["tied"].append(tied)

    global TOKENIZE_RUNS
    TOKENIZE_RUNS += 1
    features = datasets.Features({
        "prompt_ids": datasets.Sequence(datasets.Value("int32")),
        "chosen_ids": datasets.Sequence(datasets.Value("int32")),
        "rejected_ids": datasets.Sequence(datasets.Value("int32")),
        "response_ids": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "scores": datasets.Sequence(datasets.Value("float64")),
        "dropped_responses": datasets.Sequence(datasets.Value("string")), "tied": datasets.Value("bool"),
        "truncated": datasets.Value("bool"), "status": datasets.Value("string"), "field": datasets.Value("string"),
        "where": datasets.Value("string"), "extra": datasets.Value("string"),
    })
    strings = ("pair", "status", "field", "where", "extra")
    inputs = datasets.Features({name: datasets.Value("string") for name in strings}
                               | {"dropped_responses": features["dropped_responses"], "tied": features["tied"]})
    table = datasets.Dataset.from_dict(columns, features=inputs).map(
        PairTokenizer(tokenizer, max_length, max_prompt_length), remove_columns=["pair"], features=features,
        num_proc=num_proc if num_proc and num_proc > 1 and len(rows) >= 2 * num_proc else None,
        desc="tokenizing", new_fingerprint=key,
    )
    if not use_cache:
        return table, ""
    cache.store(folder, table)  # concurrent ranks or runs never see half an entry; a failed write only warns
    return table, "miss"
