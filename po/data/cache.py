"""The tokenized-data cache on disk: entries sealed by a manifest of sha256 checksums, verified on every read.

An entry is one folder `DIR/<key>/` written by `datasets.Dataset.save_to_disk`, plus `po_manifest.json` (the size
and sha256 of every other file), written last. The folder is built under a temporary name beside its place and
renamed into it (`po.atomic.staged_dir`), so a concurrent reader sees a whole entry or none.

Reading hashes every file of the entry (streamed, 8 MiB at a time) before the table is loaded into memory: a reader
never writes into an entry, so any number of ranks and runs can read it at once. An entry with a file missing,
truncated, changed or unreadable, or without a manifest (written by an older po, or damaged), is reported in one
warning line naming its folder and treated as a miss: the rows are tokenized again and the entry replaced.
Verifying costs one sequential read of the entry, about 1 s per GB (docs/data.md has the measurement).

A cache that cannot be written (disk full, read-only or unwritable folder) is a warning, not an error: the run goes
on with the table in memory, and the partial entry is removed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from po.atomic import WriteError, staged_dir
from po.fingerprint import folder_manifest, manifest_problem

log = logging.getLogger(__name__)

MANIFEST = "po_manifest.json"


def seal(folder: Path) -> None:
    """Write the manifest of `folder` (size and sha256 of every file); it is the last file an entry gets."""
    # a plain write: `folder` is still the staged copy, which only becomes visible whole (po.atomic.staged_dir)
    files = folder_manifest(folder, skip=(MANIFEST,))
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))


def problem(folder: Path) -> str | None:
    """None when every file of the entry `folder` matches its manifest, else what is wrong (a phrase)."""
    try:
        listed: dict[str, Any] = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "has no checksum manifest (written by an older po, or damaged)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"has an unreadable manifest ({type(exc).__name__})"
    found = manifest_problem(folder, listed, skip=(MANIFEST,))
    return None if found is None else f"is damaged: {found}"


def load(folder: Path):
    """The cached table at `folder` once verified, or None (absent, or bad: reported in one warning line)."""
    import datasets

    if not folder.exists():
        return None
    reason = problem(folder)
    if reason is None:
        try:  # read into memory, as a miss leaves the table: datasets would otherwise write its own cache files
            # (select, flatten_indices) into the entry's folder, which its manifest then reports as damaged
            return datasets.load_from_disk(str(folder), keep_in_memory=True)
        except Exception as exc:  # verified yet unloadable (e.g. written by another datasets version)
            reason = f"does not load ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    log.warning("tokenized-data cache entry %s %s; tokenizing again and replacing it", folder, reason)
    return None


def store(folder: Path, table) -> bool:
    """Save `table` as the entry `folder`, replacing a bad one; False if a valid entry is already there or the cache
    cannot be written (then one warning line: the caller goes on with `table` in memory)."""
    if folder.exists() and problem(folder) is None:
        return False  # a concurrent run stored the same entry first
    try:
        with staged_dir(folder) as staged:
            table.save_to_disk(str(staged), num_proc=None)
            seal(staged)
    except WriteError as exc:
        if folder.exists() and problem(folder) is None:
            return False  # a concurrent writer renamed its entry into place first: nothing to warn about
        log.warning("tokenized-data cache not written: cannot write %s (%s); this run continues without it (set "
                    "data.cache_dir to a writable folder with free space, or data.cache=false)", exc.path, exc.reason)
        return False
    return True
