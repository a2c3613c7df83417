"""NaN/inf guard: an injected non-finite loss skips the step (parameters and optimizer state unchanged), is counted
and logged with the batch's row ids; `trainer.max_bad_steps` bad steps in a row stop the run with a clear message
and a checkpoint of the last good state."""

import json

import pytest
import torch
from conftest import compose_cfg, read_metrics, run_train
from fault_helpers import JOB
from safetensors.torch import load_file
from transformers import TrainerCallback

from losses.base import LossOutput
from po.guard import NonFiniteSteps
from po.rundir import prepare_run_dir
from po.train import build_trainer

pytestmark = pytest.mark.slow


class NaNAtCalls(torch.nn.Module):
    """Test weighting: the wrapped loss, with per-pair losses replaced by NaN on the listed (1-based) calls."""

    def __init__(self, loss, bad_calls, **_):
        super().__init__()
        self.loss, self.bad_calls, self.calls = loss, set(bad_calls), 0

    @property
    def needs_reference(self):
        return self.loss.needs_reference

    @property
    def needs(self):
        return self.loss.needs

    def forward(self, batch):
        out = self.loss(batch)
        if self.training_call():
            return LossOutput(out.per_pair * float("nan"), out.chosen_rewards, out.rejected_rewards, out.metrics)
        return out

    def training_call(self) -> bool:
        self.calls += 1
        return self.calls in self.bad_calls


def nan_overrides(bad_calls):
    return JOB + [f"+weighting._target_={__name__}.NaNAtCalls", f"+weighting.bad_calls={list(bad_calls)}"]


class Snapshots(TrainerCallback):
    """Parameters and the optimizer's step count after every optimizer step."""

    def __init__(self):
        self.params, self.opt_steps = {}, {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.params[state.global_step] = [p.detach().clone() for p in model.parameters()]
        first = next(iter(optimizer.state.values()), {})
        self.opt_steps[state.global_step] = float(first.get("step", 0))


def test_nan_steps_are_skipped_counted_and_logged(tmp_path):
    cfg = compose_cfg(nan_overrides([3, 4]))
    prepare_run_dir(cfg, tmp_path)
    trainer, _, _ = build_trainer(cfg, tmp_path)
    snap = Snapshots()
    trainer.add_callback(snap)
    trainer.train()
    for step in (3, 4):  # no update at all
        assert all(torch.equal(a, b) for a, b in zip(snap.params[step], snap.params[2]))
        assert snap.opt_steps[step] == snap.opt_steps[2]
    assert not all(torch.equal(a, b) for a, b in zip(snap.params[5], snap.params[4]))  # training went on
    assert snap.opt_steps[12] == 10.0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    report = [json.loads(line) for line in (tmp_path / "nonfinite_steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in report] == [3, 4] and all(r["cause"] == "loss" for r in report)
    assert all(len(r["row_ids"]) == 8 for r in report)
    logged = {m["step"]: m for m in read_metrics(tmp_path) if "loss" in m}
    assert logged[4]["nonfinite_steps"] == 2 and "nonfinite_steps" not in logged[2]
    assert all(isinstance(logged[s]["loss"], float) for s in logged)


def test_max_bad_steps_stops_with_checkpoint_of_last_good_state(tmp_path):
    overrides = nan_overrides(range(4, 100)) + ["trainer.max_bad_steps=3", "trainer.save_strategy=steps",
                                                "trainer.save_steps=3"]
    with pytest.raises(NonFiniteSteps) as err:
        run_train(tmp_path, overrides)
    message = str(err.value)
    assert "stopped at step 6" in message and "trainer.max_bad_steps=3" in message and "checkpoint-6" in message
    good, stopped = tmp_path / "checkpoints" / "checkpoint-3", tmp_path / "checkpoints" / "checkpoint-6"
    a, b = load_file(good / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = torch.load(good / "optimizer.pt", weights_only=True)["state"]
    opt_b = torch.load(stopped / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    assert not (tmp_path / "summary.json").exists()
