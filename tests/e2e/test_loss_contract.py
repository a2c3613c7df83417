"""The loss contract (losses/base.py), used in full by a loss written outside po/: it trains through `po-train` and
under `weighting=lcpo`, with its YAML in a config folder of its own and no edit in po/.

`HookedLoss` uses every hook: a parameter sized from the model (`bind_model`) in its own optimizer group
(`optimizer_param_groups`, `trains_parameters`), state saved with the model (`state_to_checkpoint`, a buffer), an
after-step hook (`after_optimizer_step`, counting optimizer steps), and an extra from `needs` (`token_kl`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from losses.base import TOKEN_KL, TOKEN_LOGPS, LossOutput, PairBatch, PreferenceLoss, common_metrics, masked_sum
from tests.helpers.runs import REPO

STEPS = 3


class HookedLoss(PreferenceLoss):
    """DPO with beta * exp(log_scale) (log_scale learned), plus kl_weight * mean token KL as a penalty."""

    trains_parameters = True

    def __init__(self, beta: float = 0.1, kl_weight: float = 0.01):
        super().__init__()
        self.beta, self.kl_weight = float(beta), float(kl_weight)
        self.needs = frozenset({TOKEN_LOGPS, TOKEN_KL})
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("hidden_size", torch.zeros((), dtype=torch.long))
        self.log_scale = None

    def bind_model(self, model: torch.nn.Module) -> None:
        self.hidden_size.fill_(model.config.get_text_config().hidden_size)
        self.log_scale = torch.nn.Parameter(torch.zeros(()))

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": [self.log_scale], "weight_decay": 0.0, "lr": 0.05}]

    def after_optimizer_step(self) -> None:
        self.steps_seen += 1

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.log_ratios()
        beta = self.beta * self.log_scale.exp()
        kl = (masked_sum(batch.extras["token_kl_chosen"], batch.chosen_mask)
              + masked_sum(batch.extras["token_kl_rejected"], batch.rejected_mask))
        penalty = self.kl_weight * kl
        per_pair = F.softplus(-beta * (chosen - rejected)) + penalty
        rewards = (beta.detach() * chosen.detach(), beta.detach() * rejected.detach())
        return LossOutput(per_pair, *rewards, metrics=common_metrics(batch, rewards), penalty=penalty)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["none", "lcpo"])
def test_a_loss_using_every_hook_trains_through_po_train(tmp_path, weighting):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "po.cli", f"hydra.searchpath=[file://{REPO / 'tests' / 'e2e' / 'conf'}]",
           "loss=hooked", f"weighting={weighting}", f"trainer.max_steps={STEPS}", "trainer.logging_steps=1",
           "trainer.disable_tqdm=true", "eval.before_training=false", "data.max_rows=64", "data.max_length=64",
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["reference"] == "model"
    state = torch.load(run_dir / "model" / "loss_state.pt", weights_only=True)
    prefix = "base." if weighting == "lcpo" else ""
    assert state[f"{prefix}steps_seen"].item() == STEPS                 # after_optimizer_step, once per step
    assert state[f"{prefix}hidden_size"].item() == 64                   # bind_model saw the model (tiny: 64)
    assert state[f"{prefix}log_scale"].abs().item() > 1e-4              # its optimizer group trained it
    if weighting == "lcpo":
        assert "eta" in state                                            # the weighting's own state beside it
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, STEPS + 1))
