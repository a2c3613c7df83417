"""File-system faults for tests: a small tmpfs that fills up, and one that is read-only.

Mounting needs root (or CAP_SYS_ADMIN); where it is not allowed the test is skipped with the reason. Root ignores
permission bits, so an unwritable folder is made with a read-only mount (EROFS), which binds root too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def _mount(folder: Path, size: str) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")


@contextlib.contextmanager
def full_tmpfs(folder: Path, free_bytes: int = 4096, size: str = "1m") -> Iterator[Path]:
    """A tmpfs at `folder` filled by `.filler` until about `free_bytes` are left (a disk that is nearly full)."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount(folder, size)
    try:
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        (folder / ".filler").write_bytes(b"\0" * max(0, free - free_bytes))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def read_only_tmpfs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs at `folder`, remounted read-only: every write in it fails with EROFS, even for root."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount(folder, size)
    try:
        done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only here ({done.stderr.decode().strip()})")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def files_in(folder: Path) -> list[str]:
    """Every file and folder under `folder` except the filler (what a failed write must not leave)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != ".filler")
