"""Where the on-disk caches live: one root for all of them, so one variable moves them together.

A cache's folder is its own `dir` setting when one is given, else `$PO_CACHE_DIR/<cache>`, else
`$XDG_CACHE_HOME/po/<cache>` (`~/.cache/po/<cache>` by default). Why one rule: a multi-node job must keep every
cache on a file system all nodes see (slurm/README.md), and a cache that ignored `PO_CACHE_DIR` was filled again by
each node on its own local disk.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKENIZED, REFERENCE, WARMUP, JUDGE = "tokenized", "reference", "warmup", "judge"


def cache_folder(configured: str | None, cache: str) -> Path:
    """The folder of `cache` (one of the names above): `configured` (`~` expanded) when set, else under the root."""
    if configured:
        return Path(os.path.expanduser(str(configured)))
    if os.environ.get("PO_CACHE_DIR"):
        return Path(os.environ["PO_CACHE_DIR"]) / cache
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "po" / cache
