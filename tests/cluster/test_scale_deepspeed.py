"""DeepSpeed ZeRO-2/3 with 2 CPU processes (DS_ACCELERATOR=cpu, gloo), started by real launchers.

Each distributed run is compared with a plain 1-process run on the same global batch (2 ranks x 2 pairs = 1 x 4):
the same seed gives the same starting weights, so the per-step losses and log-probs must agree to 1e-4, the
loss must go down, and the consolidated saved model must reload with `from_pretrained` and match the plain run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from po.errors import ConfigError
from po.models.zero import inference_config
from po.run.distributed import require_pinned_run_dir
from tests.helpers.runs import REPO, compose_cfg, run_train

SMALL = ["trainer.max_steps=4", "trainer.logging_steps=1", "trainer.disable_tqdm=true", "data.max_rows=40",
         "data.max_length=64", "trainer.per_device_eval_batch_size=2"]
# The random-init start: 4 steps from it visibly lower the loss (the last check of the test below); from the warmed-up
# start they need not. 2 processes = 1 process with the warm-up on is tests/cluster/test_scale_lists.py's case.
RANDOM_START = ["model.warmup.steps=0"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: str, run_dir, overrides: list[str]) -> subprocess.CompletedProcess:
    args = [f"hydra.run.dir={run_dir}", *SMALL, "trainer.per_device_train_batch_size=2", *overrides]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_port()), "-m", "po.cli", *args]
    else:  # the deepspeed launcher: --no_local_rank (Hydra takes no --local_rank flag), --module po.cli.train
        cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2", "--no_local_rank",
               "--master_port", str(_port()), "--module", "po.cli", *args]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _train_logs(run_dir) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The reference: one process, no DeepSpeed, 4 pairs per step."""
    run_dir = tmp_path_factory.mktemp("plain")
    run_train(run_dir, SMALL + RANDOM_START + ["trainer.per_device_train_batch_size=4"], fast=False)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("stage,launcher", [("zero3", "torchrun"), ("zero2", "deepspeed")])
def test_two_process_deepspeed_matches_one_process(stage, launcher, plain_run, tmp_path):
    run_dir = tmp_path / stage
    proc = _launch(launcher, run_dir, [f"deepspeed={stage}", *RANDOM_START])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert summary["eval_before"]["eval_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at start
    assert "eval_loss" in summary["eval"]

    dist, plain = _train_logs(run_dir), _train_logs(plain_run)
    assert sorted(dist) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):  # step 1 pins the batch (log-probs), later steps the all-reduced gradients
        for key in ("loss", "logps/chosen", "logps/rejected"):
            assert dist[step][key] == pytest.approx(plain[step][key], abs=1e-4), (step, key)
    assert dist[4]["loss"] < dist[1]["loss"]  # training moves the policy toward the chosen answers

    if stage == "zero3":  # the reference was sharded too (an inference engine, not a full copy per rank)
        assert "reference model: DeepSpeed ZeRO-3 inference engine (sharded over 2 ranks)" in \
            (run_dir / "cli.log").read_text()
    saved = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))  # one consolidated HF checkpoint
    expected = AutoModelForCausalLM.from_pretrained(str(plain_run / "model"))
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, expected(ids).logits, rtol=0, atol=1e-3)
    assert (run_dir / "resolved_config.yaml").is_file()


def test_multi_process_launch_needs_pinned_run_dir(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="pin the run directory"):
        require_pinned_run_dir(["deepspeed=zero3"])
    require_pinned_run_dir(["deepspeed=zero3", "hydra.run.dir=runs/x"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    require_pinned_run_dir(["deepspeed=zero3"])


def test_reference_inference_config_drops_training_state():
    """hidden_size 64 -> reduce bucket 64^2 = 4096, prefetch 0.9 x 4096 = 3686, persistence 10 x 64 = 640."""
    from po.models.policy import build_tiny_model
    from po.models.tokenizer import load_tiny_tokenizer

    cfg = compose_cfg(["deepspeed=zero3_offload"])
    train_config = dict(cfg.deepspeed.config, optimizer={"type": "AdamW"}, scheduler={"type": "WarmupLR"})
    from omegaconf import OmegaConf

    train_config = OmegaConf.to_container(OmegaConf.create(train_config))
    model = build_tiny_model(cfg.model, load_tiny_tokenizer(), 0)
    out = inference_config(train_config, model)
    assert "optimizer" not in out and "scheduler" not in out
    zero = out["zero_optimization"]
    assert "offload_optimizer" not in zero and zero["offload_param"]["device"] == "cpu"
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"],
            zero["stage3_param_persistence_threshold"]) == (4096, 3686, 640)
    assert train_config["optimizer"] and train_config["zero_optimization"]["reduce_bucket_size"] == "auto"
