"""Test session settings: offline, quiet tokenizers, DeepSpeed's CPU accelerator; each test folder's marker.

Helpers live in tests/helpers/ and are imported from there. Markers (registered in pyproject.toml, checked with
--strict-markers) follow the folders: `unit`, `e2e`, `faults`, `cluster`, `recipes`; e.g. `-m "not cluster"`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = ("unit", "e2e", "faults", "cluster", "recipes")


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, folder))
