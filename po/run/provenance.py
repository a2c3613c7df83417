"""What produced a run: the toolkit's git commit and the versions of the packages that do the work."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "deepspeed", "hydra-core")


def git_commit() -> str:
    """The commit of the `po` checkout this code runs from, or "not a git checkout"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not a git checkout"
    return out.stdout.strip() if out.returncode == 0 else "not a git checkout"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
