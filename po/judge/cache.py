"""The starting model's samples and judge scores, stored once and reused by every run of a sweep.

Why: in a sweep of k runs the starting model is the same in every run, so sampling and judging it k times is
wasted work (it is as costly as the policy's half of the judged eval). An entry is keyed by everything its content
depends on (the caller, po.run.judged, hashes: the starting model, the tokenizer, the prompts' token ids, the
sampling settings and the judge); a changed input is a different file, so a stale entry is never read.

The discipline is po.run.refcache's: an entry is one JSON file written atomically (po.atomic), sealed with a sha256
of its content (po.fingerprint) that is recomputed on every read; a file that does not parse, fails the checksum or
belongs to another key is one warning line and a miss (recomputed and replaced). A file that cannot be written is a
warning for po-train (the values are used from memory) and an error for po-cache-judge (`must_write`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from po.atomic import WriteError, write_text_atomic
from po.cache_dirs import JUDGE, cache_folder
from po.fingerprint import json_sha256

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_dir(configured: str | None) -> Path:
    """`judge.dir`, else $PO_CACHE_DIR/judge, else ~/.cache/po/judge (po/cache_dirs.py)."""
    return cache_folder(configured, JUDGE)


def entry_path(directory: Path, key: str) -> Path:
    return Path(directory) / f"start-{key}.json"


def _checksum(entry: dict[str, Any]) -> str:
    """sha256 of everything in the entry but its own checksum."""
    return json_sha256({k: v for k, v in entry.items() if k != "sha256"})


def _problem(entry: Any, key: str) -> str | None:
    if not isinstance(entry, dict):
        return f"holds a {type(entry).__name__}, not a cache entry"
    if "sha256" not in entry:
        return "has no checksum"
    if _checksum(entry) != entry["sha256"]:
        return "does not match its checksum (corrupted)"
    if entry.get("key") != key or entry.get("format") != CACHE_FORMAT:
        return f"was written for another key or format (key {entry.get('key')}, format {entry.get('format')})"
    return None


def read_entry(path: Path, key: str) -> dict[str, Any] | None:
    """The verified entry for `key` at `path`, or None (missing, or bad: one warning line)."""
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("judge cache %s is unreadable (%s); recomputing and replacing it", path, type(exc).__name__)
        return None
    problem = _problem(entry, key)
    if problem is not None:
        log.warning("judge cache %s %s; recomputing and replacing it", path, problem)
        return None
    return entry


def write_entry(path: Path, entry: dict[str, Any]) -> bool:
    """Seal and write `entry` atomically; False (nothing written) when a valid one for its key is already there."""
    if read_entry(path, entry["key"]) is not None:
        return False  # a concurrent run wrote the same key
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path.parent, exc.strerror or type(exc).__name__, exc.errno) from exc
    write_text_atomic(path, json.dumps({**entry, "sha256": _checksum(entry)}))
    return True
