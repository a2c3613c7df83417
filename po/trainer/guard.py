"""NaN/inf guard: a step whose loss or gradient norm is not finite changes nothing and is reported.

How the update is prevented: just before `optimizer.step()` every gradient the optimizer would apply is set to None
(the model's and the loss module's own parameters, e.g. SparsePO's mask network), and torch optimizers skip
parameters without a gradient (no parameter change, no Adam moment or step-count change). A non-finite gradient of
either counts as a bad step. The learning-rate schedule still advances, as the batch was consumed: the schedule
follows `global_step`. The loss module's own state (LCPO's eta) is restored to its value before the step. Ranks
agree on the decision (one tiny all-reduce).
Under DeepSpeed the gradients live inside the engine, so po counts, reports and stops but cannot skip the update
itself (DeepSpeed's fp16 loss scaler skips overflowing steps on its own).

`trainer.max_bad_steps` consecutive bad steps stop the run: a checkpoint of the current state (= the last good
parameters and optimizer state) is saved and `NonFiniteSteps` is raised with the rows involved.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from po.errors import POError
from po.trainer.preemption import any_rank

log = logging.getLogger(__name__)



class NonFiniteSteps(POError):
    """Too many consecutive steps with a non-finite loss or gradient norm."""


class NonFiniteGuard(TrainerCallback):
    def __init__(self, model: torch.nn.Module, loss_module: torch.nn.Module | None, max_bad_steps: int,
                 device: torch.device, report_path: Path | None):
        self.model, self.loss_module, self.max_bad_steps = model, loss_module, max_bad_steps
        self.device, self.report_path = device, report_path
        self.total = 0          # bad steps in the whole run (restored on resume)
        self.consecutive = 0    # bad steps in a row, up to the current one
        self.tripped = False
        self.last_rows: list[int] = []
        self._loss_bad = False
        self._loss_value = None
        self._rows: list[int] = []
        self._micro_losses: list[torch.Tensor] = []   # this step's micro-batch losses, read once per step
        self._micro_rows: list[torch.Tensor] = []
        self._step_bad = False
        self._loss_state = None

    # called by the trainer after each micro-batch's forward/backward; kept as tensors (no device sync here)
    def note_micro_batch(self, loss: torch.Tensor, row_ids: torch.Tensor | None) -> None:
        self._micro_losses.append(loss.detach())
        if row_ids is not None:
            self._micro_rows.append(row_ids.detach())

    def _read_micro_batches(self) -> None:
        """Once per optimizer step: was any micro-batch loss non-finite, and which rows did the step use."""
        self._rows = [int(r) for rows in self._micro_rows for r in rows.tolist()]
        bad = [loss for loss in self._micro_losses if not torch.isfinite(loss).all()]
        if bad:
            self._loss_bad = True
            self._loss_value = float(bad[-1].float().mean())
        self._micro_losses, self._micro_rows = [], []

    def state(self) -> dict:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.total, self.consecutive = int(state.get("total", 0)), int(state.get("consecutive", 0))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.loss_module is not None and len(self.loss_module.state_dict()):
            self._loss_state = copy.deepcopy(self.loss_module.state_dict())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._read_micro_batches()
        params = list(self.model.parameters())
        if self.loss_module is not None:
            params += list(self.loss_module.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        grads_bad = bool(grads) and not torch.isfinite(torch.nn.utils.get_total_norm(grads)).item()
        self._step_bad = any_rank(self._loss_bad or grads_bad, self.device)
        if self._step_bad:
            for p in params:
                p.grad = None   # torch optimizers skip parameters without a gradient: no update at all

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_bad:
            self.total += 1
            self.consecutive += 1
            self.last_rows = list(self._rows)
            what = f"loss {self._loss_value}" if self._loss_bad else "gradient norm"
            log.warning("step %d: non-finite %s; update skipped (%d in a row, %d in total); rows in this batch: %s",
                        state.global_step, what, self.consecutive, self.total, self._rows)
            if self.report_path is not None:
                with open(self.report_path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, "loss": _jsonable(self._loss_value),
                                        "cause": "loss" if self._loss_bad else "grad_norm",
                                        "row_ids": self._rows}) + "\n")
            if self._loss_state is not None:
                self.loss_module.load_state_dict(self._loss_state)
            if self.consecutive >= self.max_bad_steps:
                self.tripped = True
                control.should_log = True
                control.should_save = True
                control.should_training_stop = True
        else:
            self.consecutive = 0
        self._loss_bad, self._loss_value, self._rows, self._step_bad = False, None, [], False
        return control


def _jsonable(value):
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value
