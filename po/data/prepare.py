"""Normalize and tokenize every row of one source once, and cache the result on disk for later runs.

The result is a `datasets.Dataset` with one row per source row: `prompt_ids`, `chosen_ids`, `rejected_ids`
(truncated to `max_length`), `status` ("" = kept, else the report class that drops it), `truncated`, `where`
and `extra` (carried columns as JSON). Splitting, mixing and the report work on it by index, so a change of
seed, split fraction or mixture weight reuses the cache.

Cache key: the rows (content and location), the tokenizer (vocabulary, special tokens, chat template), the
format options and the length limits. Folder: `data.cache_dir`, else `$PO_CACHE_DIR/tokenized`, else
`~/.cache/po/tokenized`. `data.cache=false` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from po.data.formats import Dropped, FormatOptions, normalize_row
from po.data.pairs import Pair
from po.data.sources import Row
from po.data.tokenize import leading_special_ids, tokenize_pair, truncate

CACHE_VERSION = "1"
# How many times rows were actually tokenized in this process (a cache hit leaves it unchanged); tests read it.
TOKENIZE_RUNS = 0


def default_cache_dir() -> Path:
    if os.environ.get("PO_CACHE_DIR"):
        return Path(os.environ["PO_CACHE_DIR"]) / "tokenized"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "po" / "tokenized"


def rows_fingerprint(rows: list[Row]) -> str:
    h = hashlib.sha256()
    for row, where in rows:
        h.update(json.dumps([where, row], sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: vocabulary and merges, special tokens, chat template, leading specials."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        from datasets.fingerprint import Hasher

        h.update(Hasher.hash(tokenizer).encode())
    h.update(repr((type(tokenizer).__name__, tokenizer.chat_template, tokenizer.bos_token_id, tokenizer.eos_token_id,
                   sorted(tokenizer.all_special_ids), leading_special_ids(tokenizer))).encode())
    return h.hexdigest()


class PairTokenizer:
    """The per-row function of `Dataset.map`: picklable, so `data.num_proc` processes can run it."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int | None):
        self.tokenizer, self.max_length, self.max_prompt_length = tokenizer, max_length, max_prompt_length
        self.leading = leading_special_ids(tokenizer)

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "truncated": False}
        if example["status"]:
            return out
        pair = Pair(**json.loads(example["pair"]), where=example["where"])
        full = tokenize_pair(pair, self.tokenizer, self.leading)
        tp = truncate(full, self.max_length, self.max_prompt_length)
        if tp is None:
            return {**out, "status": "dropped_length"}
        if tp.chosen_ids == tp.rejected_ids:
            return {**out, "status": "identical"}
        truncated = (len(tp.prompt_ids), len(tp.chosen_ids), len(tp.rejected_ids)) != (
            len(full.prompt_ids), len(full.chosen_ids), len(full.rejected_ids))
        return {"prompt_ids": tp.prompt_ids, "chosen_ids": tp.chosen_ids, "rejected_ids": tp.rejected_ids,
                "truncated": truncated}


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
    if use_cache and (folder / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(folder)), "hit"

    columns = {"pair": [], "status": [], "where": [], "extra": []}
    for row, where in rows:
        result = normalize_row(row, where, opts)
        if isinstance(result, Dropped):
            columns["pair"].append("")
            columns["status"].append(result.reason)
            columns["extra"].append("{}")
        else:
            columns["pair"].append(json.dumps({"prompt": result.prompt, "chosen": result.chosen,
                                               "rejected": result.rejected}))
            columns["status"].append("")
            columns["extra"].append(json.dumps(result.extra))
        columns["where"].append(where)

    global TOKENIZE_RUNS
    TOKENIZE_RUNS += 1
    features = datasets.Features({
        "prompt_ids": datasets.Sequence(datasets.Value("int32")),
        "chosen_ids": datasets.Sequence(datasets.Value("int32")),
        "rejected_ids": datasets.Sequence(datasets.Value("int32")),
        "truncated": datasets.Value("bool"), "status": datasets.Value("string"),
        "where": datasets.Value("string"), "extra": datasets.Value("string"),
    })
    table = datasets.Dataset.from_dict(columns).map(
        PairTokenizer(tokenizer, max_length, max_prompt_length), remove_columns=["pair"], features=features,
        num_proc=num_proc if num_proc and num_proc > 1 and len(rows) >= 2 * num_proc else None,
        desc="tokenizing", new_fingerprint=key,
    )
    if not use_cache:
        return table, ""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
    try:
        table.save_to_disk(str(tmp), num_proc=None)
        os.replace(tmp, folder)  # atomic: concurrent ranks or runs never see half a cache entry
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same entry first
    return table, "miss"
