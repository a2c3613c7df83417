"""The benchmark runs end to end in smoke mode and prints its table (no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.runs import REPO


@pytest.mark.slow
def test_bench_vs_trl_smoke_prints_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "bench_vs_trl.py"), "--smoke", "--workloads", "W1",
                           "--threads", "1", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| workload | tool | pairs/s | tokens/s | peak RSS GiB |" in out
    for label in ("| W1 | TRL DPOTrainer |", "| W1 | po |", "| W1 | po reference=cached |"):
        assert label in out
    assert "(agree to 1e-4)" in out  # same maths as TRL on the same batches
    assert list((tmp_path / "cache").glob("*.pt"))  # the cached run read a cache the po run wrote
