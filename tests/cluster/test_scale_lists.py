"""Ranked lists under DeepSpeed ZeRO-3 with 2 CPU processes (torchrun, gloo): the per-step losses equal a plain
1-process run on the same global batch (2 ranks x 2 lists = 1 x 4), as tests/cluster/test_scale_deepspeed.py checks
for pairs.

Run: `python -m pytest tests/cluster/test_scale_lists.py -q` (about two minutes on CPU).
"""

from __future__ import annotations

import json

import pytest

from po.data.toy import generate_lists
from tests.cluster.test_scale_deepspeed import SMALL, _launch, _train_logs
from tests.helpers.runs import run_train


@pytest.mark.slow
def test_zero3_two_processes_on_lists_match_one_process(tmp_path):
    data = tmp_path / "ranked.jsonl"
    rows = generate_lists(40, seed=3)
    for i, row in enumerate(rows):
        if i % 2:
            row["responses"], row["scores"] = row["responses"][:3], row["scores"][:3]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["data=jsonl", f"data.path={data}", "loss=pl_dpo"]
    plain_dir = tmp_path / "plain"
    run_train(plain_dir, SMALL + common + ["trainer.per_device_train_batch_size=4"], fast=False)
    run_dir = tmp_path / "zero3"
    proc = _launch("torchrun", run_dir, ["deepspeed=zero3", *common])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert "eval_rank/ndcg" in summary["eval"]
    dist, plain = _train_logs(run_dir), _train_logs(plain_dir)
    for step in (1, 2, 3, 4):
        for key in ("loss", "logps/chosen", "logps/rejected"):
            assert dist[step][key] == pytest.approx(plain[step][key], abs=1e-4), (step, key)
