"""The judged eval in a 2-process data-parallel run (torchrun, CPU, gloo), plain DDP and DeepSpeed ZeRO-2: the
prompts are split over the ranks and gathered, and the starting model's samples are exactly those of a
single-process run (chunk seeds do not depend on the number of processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers.runs import REPO, run_train

ARGS = ["trainer.max_steps=2", "trainer.disable_tqdm=true", "data.max_rows=60", "data.max_length=64",
        "trainer.per_device_train_batch_size=2", "eval.before_training=false", "judge=function",
        "judge.function=po.judge.toy.score", "judge.num_prompts=6", "judge.batch_size=2", "judge.max_new_tokens=8"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(folder) -> dict:
    [path] = list(folder.glob("start-*.json"))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    run_train(root / "run", ARGS + [f"judge.dir={root / 'cache'}"], fast=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", ["none", "zero2"])
def test_two_processes_sample_what_one_does(tmp_path, single, deepspeed):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
           "-m", "po.cli", f"hydra.run.dir={tmp_path / 'run'}", *ARGS, f"judge.dir={tmp_path / 'cache'}",
           f"deepspeed={deepspeed}"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["judge"]["start_sampled"] == 1
    assert 0.0 <= summary["eval"]["eval_judge/win_rate"] <= 1.0
    mine, theirs = _entry(tmp_path / "cache"), _entry(single / "cache")
    assert mine["key"] == theirs["key"] and mine["responses"] == theirs["responses"]
    assert mine["scores"] == theirs["scores"] and len(mine["responses"]) == 6
    rows = (tmp_path / "run" / "judged_samples.jsonl").read_text().splitlines()
    assert len(rows) == 6 * 2  # written once (rank 0), every prompt's samples gathered
