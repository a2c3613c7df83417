"""The ranked-list study in small (recipes/lists_study.py): at equal prompts, a listwise loss learns the middle of
the ranking that the best-vs-worst pair cannot teach; the listwise-vs-exploded benchmark runs and prints its table."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.helpers.runs import REPO

RECIPE = REPO / "recipes" / "lists_study.py"


def load_study():
    spec = importlib.util.spec_from_file_location("lists_study", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_listwise_learns_the_middle_of_the_ranking_that_binarized_dpo_cannot(tmp_path):
    """60 steps x 16 prompts. DPO on best-vs-worst pairs ranks 'A only' vs 'B only' near chance; Plackett-Luce DPO
    on the same prompts' full lists ranks it clearly better, and is at least as good on all six pairs."""
    study = load_study()
    rows = study.make_lists(4, seed=0)
    assert sorted(rows[0]["scores"]) == [0.0, 1.0, 2.0, 3.0]
    binarized = study.run_one("dpo_binarized", steps=60, workdir=tmp_path)
    listwise = study.run_one("pl_dpo", steps=60, workdir=tmp_path)
    assert binarized["middle_pair_accuracy"] < 0.62
    assert listwise["middle_pair_accuracy"] > binarized["middle_pair_accuracy"] + 0.08
    assert listwise["ranking_accuracy"] >= binarized["ranking_accuracy"]
    assert "| pl_dpo | 1 |" in study.table([binarized, listwise])


@pytest.mark.slow
def test_bench_lists_smoke_prints_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "bench_lists.py"), "--smoke", "--threads", "1",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| run | loss | rows per step | prompts/s | tokens/s | peak RSS GiB | GPU peak GiB | speed-up | " \
           "prompts per CPU-s | speed-up (CPU time) |" in out
    assert "| exploded | dpo | 12 |" in out and "| listwise | pl_dpo | 2 |" in out
    assert "listwise: done" in out and "(PackedListCollator)" in out and "(PackedPairCollator)" in out
