"""NaN/inf guard: an injected non-finite loss skips the step (parameters and optimizer state unchanged, the loss
module's own parameters included), is counted and logged with the batch's row ids; `trainer.max_bad_steps` bad
steps in a row stop the run with a clear message and a checkpoint of the last good state."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from losses.base import LossOutput, PreferenceLoss
from po.run.build import build_trainer
from po.run.paths import RunPaths
from po.run.rundir import prepare_run_dir
from po.trainer.guard import NonFiniteSteps
from tests.helpers.faults import JOB
from tests.helpers.runs import compose_cfg, read_metrics, run_train

pytestmark = pytest.mark.slow


class NaNAtCalls(PreferenceLoss):
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

    # a wrapper delegates the contract to the loss it wraps (losses/base.py), as LCPO does
    @property
    def trains_parameters(self):
        return self.loss.trains_parameters

    def bind_model(self, model):
        self.loss.bind_model(model)

    def optimizer_param_groups(self, weight_decay):
        return self.loss.optimizer_param_groups(weight_decay)

    def after_optimizer_step(self):
        self.loss.after_optimizer_step()

    def forward(self, batch):
        out = self.loss(batch)
        if self.training_call():
            return LossOutput(out.per_pair * float("nan"), out.chosen_rewards, out.rejected_rewards, out.metrics)
        return out

    def training_call(self) -> bool:
        self.calls += 1
        return self.calls in self.bad_calls


class NaNGradAtCalls(PreferenceLoss):
    """Test weighting with a parameter of its own: on the listed (1-based) calls the loss stays finite, but that
    parameter's gradient is NaN (a hook replaces the gradient of a term whose value is 0)."""

    def __init__(self, loss, bad_calls, **_):
        super().__init__()
        self.loss, self.bad_calls, self.calls = loss, set(bad_calls), 0
        self.scale = torch.nn.Parameter(torch.ones(()))

    @property
    def needs_reference(self):
        return self.loss.needs_reference

    @property
    def needs(self):
        return self.loss.needs

    def forward(self, batch):
        out = self.loss(batch)
        self.calls += 1
        term = self.scale * 0.0
        if self.calls in self.bad_calls and term.requires_grad:
            term.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return LossOutput(out.per_pair + term, out.chosen_rewards, out.rejected_rewards, out.metrics)


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
    prepare_run_dir(cfg.trainer, cfg.data, RunPaths(tmp_path))
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


class LossModuleSnapshots(TrainerCallback):
    """The loss module's parameters, their optimizer state (Adam moments and step count) and gradients once a step
    is complete (every callback of it done), keyed by the number of steps taken; read when the next step begins."""

    def __init__(self, loss_module: torch.nn.Module):
        self.loss_module = loss_module
        self.params, self.opt_state, self.grads = {}, {}, {}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self._record(state.global_step, optimizer)

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        self._record(state.global_step, optimizer)

    def _record(self, step: int, optimizer) -> None:
        params = list(self.loss_module.parameters())
        self.params[step] = [p.detach().clone() for p in params]
        self.grads[step] = [p.grad for p in params]
        state = [optimizer.state.get(p, {}) for p in params]
        self.opt_state[step] = [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in state]


def test_nan_step_skips_the_loss_modules_parameters_too(tmp_path):
    """SparsePO's learned mask network is trained by the loss module: on a skipped step it keeps its values and its
    AdamW state (exp_avg, exp_avg_sq and the step count), and the NaN gradient is not carried into the next step."""
    cfg = compose_cfg(nan_overrides([3]) + ["loss=sparsepo", "loss.mask_position=token", "trainer.max_steps=5",
                                            "data.max_rows=64"])
    prepare_run_dir(cfg.trainer, cfg.data, RunPaths(tmp_path))
    trainer, _, _ = build_trainer(cfg, tmp_path)
    assert len(list(trainer.loss_module.parameters())) > 0
    snap = LossModuleSnapshots(trainer.loss_module)
    trainer.add_callback(snap)
    trainer.train()
    assert [json.loads(line)["step"] for line in (tmp_path / "nonfinite_steps.jsonl").read_text().splitlines()] == [3]
    assert all(torch.equal(a, b) for a, b in zip(snap.params[3], snap.params[2]))
    for before, after in zip(snap.opt_state[2], snap.opt_state[3]):
        assert before.keys() == after.keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(torch.as_tensor(before[k]), torch.as_tensor(after[k])) for k in before)
    assert all(g is None or not g.any() for g in snap.grads[3])   # nothing carried over into step 4
    for step in (4, 5):  # training goes on, finite, and the optimizer counts only the steps it took
        assert all(torch.isfinite(p).all() for p in snap.params[step])
        assert not all(torch.equal(a, b) for a, b in zip(snap.params[step], snap.params[step - 1]))
        assert all(float(s["step"]) == step - 1 for s in snap.opt_state[step])


def test_non_finite_gradient_of_a_loss_parameter_skips_the_step(tmp_path):
    """A finite loss whose loss-module parameter gets a NaN gradient: the guard counts it (cause grad_norm) and the
    step changes nothing, neither the model nor that parameter."""
    cfg = compose_cfg(JOB + [f"+weighting._target_={__name__}.NaNGradAtCalls", "+weighting.bad_calls=[3]",
                             "trainer.max_steps=4"])
    prepare_run_dir(cfg.trainer, cfg.data, RunPaths(tmp_path))
    trainer, _, _ = build_trainer(cfg, tmp_path)
    snap, loss_snap = Snapshots(), LossModuleSnapshots(trainer.loss_module)
    trainer.add_callback(snap)
    trainer.add_callback(loss_snap)
    trainer.train()
    report = [json.loads(line) for line in (tmp_path / "nonfinite_steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["cause"]) for r in report] == [(3, "grad_norm")]
    assert all(torch.equal(a, b) for a, b in zip(snap.params[3], snap.params[2]))
    assert snap.opt_steps[3] == snap.opt_steps[2] and snap.opt_steps[4] == snap.opt_steps[2] + 1
    assert torch.equal(loss_snap.params[3][0], loss_snap.params[2][0])
    assert all(torch.isfinite(p).all() for p in [*trainer.model.parameters(), *trainer.loss_module.parameters()])
