"""File-system faults for tests: a small tmpfs that is nearly full, and one that is read-only.

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
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs mounted at `folder` for the duration (then unmounted)."""
    _mount(folder, size)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, free_bytes: int = 4096) -> None:
    """Write `.filler` in the tmpfs at `folder` until about `free_bytes` are left (a disk that is nearly full)."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / ".filler", "ab") as fh:
        fh.write(b"\0" * max(0, free - free_bytes))


def make_read_only(folder: Path) -> None:
    """Remount the tmpfs at `folder` read-only: every write in it fails with EROFS, even for root."""
    done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount a tmpfs read-only here ({done.stderr.decode().strip()})")


@contextlib.contextmanager
def full_tmpfs(folder: Path, free_bytes: int = 4096, size: str = "1m") -> Iterator[Path]:
    """A tmpfs at `folder` with only about `free_bytes` left."""
    with tmpfs(folder, size):
        fill(folder, free_bytes)
        yield folder


@contextlib.contextmanager
def read_only_tmpfs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """An empty read-only tmpfs at `folder`."""
    with tmpfs(folder, size):
        make_read_only(folder)
        yield folder


def files_in(folder: Path) -> list[str]:
    """Every file and folder under `folder` except the filler (what a failed write must not leave)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != ".filler")
