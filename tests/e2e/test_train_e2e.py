"""End to end through the real CLI: the default job learns, writes its run directory, and its model reloads."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from po.data.collate import PairCollator
from po.data.load import load_preference_data
from po.models.policy import load_reference
from po.models.tokenizer import load_tokenizer
from po.step.pair_batch import pair_loss
from po.step.reference import FrozenModelReference
from tests.helpers.runs import compose_cfg, read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`po-train` with its defaults (one override, to check it reaches the resolved config)."""
    run_dir = tmp_path_factory.mktemp("default") / "run"
    proc = subprocess.run(
        ["po-train", "loss.beta=0.2", "trainer.disable_tqdm=true", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, cwd=run_dir.parent,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stdout


def test_default_run_writes_its_directory(default_run):
    run_dir, stdout = default_run
    for name in ("resolved_config.yaml", "metrics.jsonl", "summary.json", "model/config.json",
                 "model/tokenizer_config.json"):
        assert (run_dir / name).is_file(), name
    assert "held-out reward accuracy" in stdout and "steps in" in stdout


def test_override_reaches_resolved_config(default_run):
    run_dir, _ = default_run
    cfg = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    assert cfg["loss"]["beta"] == 0.2 and cfg["loss"]["_target_"] == "losses.dpo.DPOLoss"


def test_loss_falls_and_heldout_accuracy_rises(default_run):
    run_dir, _ = default_run
    train_logs = [m for m in read_metrics(run_dir) if "loss" in m]
    assert len(train_logs) >= 4
    first, last = train_logs[0], train_logs[-1]
    assert last["loss"] < first["loss"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "grad_norm", "learning_rate", "tokens_per_second"):
        assert key in last, key
    summary = json.loads((run_dir / "summary.json").read_text())
    before, after = summary["eval_before"]["eval_rewards/accuracies"], summary["eval"]["eval_rewards/accuracies"]
    assert after > before and after >= 0.75, (before, after)
    assert summary["steps"] == compose_cfg().trainer.max_steps
    assert any("eval_rewards/accuracies" in m for m in read_metrics(run_dir))


def test_saved_model_reloads_with_same_logprobs(default_run):
    """The reloaded model reproduces the run's final held-out margins, which are built from its log-probs."""
    run_dir, _ = default_run
    cfg = compose_cfg(["loss.beta=0.2"])
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, tokenizer, cfg.seed)
    policy = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    reference = FrozenModelReference(load_reference(cfg.model, tokenizer, cfg.seed, policy))
    from losses.dpo import DPOLoss

    batch = PairCollator(tokenizer.pad_token_id)([data.eval[i] for i in range(len(data.eval))])
    with torch.no_grad():
        out = pair_loss(policy, batch, DPOLoss(beta=0.2), reference)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert out.metrics["rewards/margins"].mean().item() == pytest.approx(
        summary["eval"]["eval_rewards/margins"], rel=1e-4, abs=1e-5)
    assert out.per_pair.mean().item() == pytest.approx(summary["eval"]["eval_loss"], rel=1e-4, abs=1e-5)


def test_python_module_is_the_same_program(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "po.cli", "--cfg", "job"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "_target_: losses.dpo.DPOLoss" in proc.stdout


def test_unknown_hf_model_offline_names_the_id(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "po.cli", "model=hf", "model.name_or_path=nobody/no-such-model",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("po-train: error:")]
    assert len(errors) == 1 and "nobody/no-such-model" in errors[0] and "offline" in errors[0], proc.stderr[-2000:]
