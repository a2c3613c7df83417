"""The trainer's side of the loss contract (losses/base.py): parameters, optimizer step hooks, saved state.

A loss may own parameters (SparsePO's mask network). They live in the loss module, not in the policy, so the
exported Hugging Face model stays a plain causal LM, and `loss_state.pt` (beside every checkpoint and the final
model) saves and restores them with the loss's other state (LCPO's eta). Here:

- `loss_param_groups`: the loss's optimizer groups (`PreferenceLoss.optimizer_param_groups`), added to the Trainer's
  optimizer by `PreferenceTrainer.create_optimizer`;
- `LossGradients`: their gradients, handled where the Trainer handles the model's. The Trainer knows only the model:
  its `model.zero_grad()` after each optimizer step does not reach the loss module, and under DDP the loss module is
  not wrapped. So its gradients are averaged across ranks before each step and cleared after it (and when training
  begins); within a step, gradient accumulation sums the micro-batches, exactly as for the model;
- `AfterOptimizerStep`: `PreferenceLoss.after_optimizer_step()` once per optimizer step on every rank;
- `save_loss_state` / `load_loss_state`: `loss_state.pt` (loaded with `weights_only=True`: data, never code).

Under DeepSpeed, po refuses a loss that trains parameters (`po.run.validate`): DeepSpeed's ZeRO optimizer takes only
the parameters of the model in its engine, and DeepSpeed 0.19.8 fails at start-up on the loss module's (ZeRO-2: a
KeyError mapping them to the engine's parameter names; ZeRO-3: they were never partitioned).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from losses.base import PreferenceLoss

LOSS_STATE_FILE = "loss_state.pt"


def loss_param_groups(loss: PreferenceLoss, default_weight_decay: float) -> list[dict]:
    """The loss's optimizer groups, each holding only trainable parameters."""
    groups = []
    for group in loss.optimizer_param_groups(default_weight_decay):
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            groups.append({**group, "params": params})
    return groups


def save_loss_state(loss: PreferenceLoss, directory: str) -> None:
    """Write `loss_state.pt` beside a checkpoint or the final model when the loss has state to save."""
    state = loss.state_to_checkpoint()
    if state:
        torch.save(state, os.path.join(directory, LOSS_STATE_FILE))


def load_loss_state(loss: PreferenceLoss, directory: str) -> None:
    path = os.path.join(directory, LOSS_STATE_FILE)
    if os.path.isfile(path):
        loss.load_checkpoint_state(torch.load(path, map_location="cpu", weights_only=True))


class LossGradients(TrainerCallback):
    """The loss module's gradients: averaged over data-parallel ranks before each optimizer step, cleared after it."""

    def __init__(self, loss: PreferenceLoss):
        self.loss = loss

    def on_train_begin(self, args, state, control, **kwargs):
        self.loss.zero_grad(set_to_none=True)  # the Trainer clears the model's here too

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        for p in self.loss.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()

    def on_optimizer_step(self, args, state, control, **kwargs):
        """Right after `optimizer.step()`, where the Trainer's `model.zero_grad()` clears the model's gradients."""
        self.loss.zero_grad(set_to_none=True)


class AfterOptimizerStep(TrainerCallback):
    """Calls `loss.after_optimizer_step()` once per optimizer step, on every rank."""

    def __init__(self, loss: PreferenceLoss):
        self.loss = loss

    def on_step_end(self, args, state, control, **kwargs):
        self.loss.after_optimizer_step()
