"""Atomic checkpoints: staged under a temporary folder, sealed with a manifest, then renamed into place.

A checkpoint folder `checkpoints/checkpoint-N` therefore either is complete or does not exist. The manifest
(`po_checkpoint.json`: step, every file's size and, by default, its sha256) lets a resume tell a complete
checkpoint from one damaged afterwards (a truncated file after a node crash, a corrupted copy). A process killed
mid-write leaves only `checkpoints/.staging/`, which the next start removes with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from po.fingerprint import folder_manifest, manifest_problem

log = logging.getLogger(__name__)

MANIFEST = "po_checkpoint.json"
STAGING = ".staging"        # checkpoints/.staging/checkpoint-N while a checkpoint is being written
SUPERSEDED = "superseded"   # checkpoints/superseded/checkpoint-N: newer than a checkpoint resumed by path
_STEP = re.compile(r"^checkpoint-(\d+)$")


def staging_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / STAGING


def write_manifest(checkpoint: Path, step: int, checksums: bool, extra: dict[str, Any] | None = None) -> None:
    """Record every file of `checkpoint` (size, sha256 when `checksums`) and fsync the manifest."""
    files = folder_manifest(checkpoint, checksums, skip=(MANIFEST,))
    manifest = {"step": step, "files": files, **(extra or {})}
    target = checkpoint / MANIFEST
    with open(target, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(checkpoint: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(checkpoint) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify(checkpoint: Path) -> str | None:
    """None when `checkpoint` matches its manifest, else the reason it cannot be trusted."""
    checkpoint = Path(checkpoint)
    manifest = read_manifest(checkpoint)
    if manifest is None:
        return f"no readable {MANIFEST} (not written by po's atomic save, or damaged)"
    return manifest_problem(checkpoint, manifest["files"], skip=(MANIFEST,), strict=False)


def commit(staged: Path, final: Path) -> None:
    """Rename a complete staged checkpoint to its final name (replacing an older copy of the same step)."""
    if final.exists():
        old = final.with_name(final.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    try:
        staged.parent.rmdir()  # the staging folder, when nothing else is being written there
    except OSError:
        pass
    try:  # make the rename durable (a no-op on file systems that do not support directory fsync)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def step_of(path: Path) -> int | None:
    match = _STEP.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints_by_step(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, newest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p), reverse=True)


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete what a killed save left behind (the staging folder); warn for each; return what was removed."""
    staging = staging_dir(output_dir)
    removed = []
    if staging.is_dir():
        for leftover in sorted(staging.iterdir()):
            log.warning("ignoring incomplete checkpoint %s (the process was stopped while writing it); removing it",
                        leftover)
            removed.append(leftover)
        shutil.rmtree(staging, ignore_errors=True)
    for leftover in Path(output_dir).glob("checkpoint-*.replaced") if Path(output_dir).is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


def newest_complete(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies against its manifest, and a warning for each newer one skipped."""
    skipped = []
    for checkpoint in checkpoints_by_step(output_dir):
        problem = verify(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint}: {problem}")
    return None, skipped


def set_aside_newer(output_dir: str | Path, step: int) -> list[Path]:
    """Move checkpoints newer than `step` to `superseded/` so an automatic resume never picks a stale future."""
    moved = []
    for checkpoint in checkpoints_by_step(output_dir):
        if step_of(checkpoint) > step:
            target = Path(output_dir) / SUPERSEDED / checkpoint.name
            target.parent.mkdir(exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(checkpoint, target)
            moved.append(target)
    return moved
