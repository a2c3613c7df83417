"""Parameters owned by a loss (SparsePO's mask network): built from the model, optimized, kept in sync.

They live in the loss module, not in the policy, so the exported Hugging Face model stays a plain causal LM and the
trainer's `loss_state.pt` (checkpoints and final model) already saves and restores them. This module gives them:

- `bind_loss_to_model`: loss submodules with a `bind_model(model)` method build their parameters from the model's
  sizes before the optimizer exists (walks submodules, so a wrapping weighting such as LCPO is no obstacle);
- `loss_param_groups`: their own optimizer parameter group(s) (a loss's `optimizer_param_groups()`, e.g. with
  `mask_weight_decay`), added by `PreferenceTrainer.create_optimizer`;
- `LossGradients`: their gradients, handled where the Trainer handles the model's. The Trainer knows only the model:
  its `model.zero_grad()` after each optimizer step does not reach the loss module, and under DDP the loss module is
  not wrapped. So its gradients are averaged across ranks before each step and cleared after it (and when training
  begins); within a step, gradient accumulation sums the micro-batches, exactly as for the model.

Under DeepSpeed, po refuses a loss that trains parameters (`po.config.validate`): DeepSpeed's ZeRO optimizer takes
only the parameters of the model in its engine, and DeepSpeed 0.19.8 fails at start-up on the loss module's (ZeRO-2:
a KeyError mapping them to the engine's parameter names; ZeRO-3: they were never partitioned).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from po.step.logprobs import unwrap


def bind_loss_to_model(loss_module: torch.nn.Module, model: torch.nn.Module) -> None:
    for module in list(loss_module.modules()):
        bind = getattr(module, "bind_model", None)
        if callable(bind):
            bind(unwrap(model))


def loss_trains_parameters(loss_module: torch.nn.Module) -> bool:
    """True when some part of the loss declares trainable parameters (known at config time, before they exist)."""
    return any(getattr(m, "trains_parameters", False) for m in loss_module.modules())


def loss_param_groups(loss_module: torch.nn.Module, default_weight_decay: float) -> list[dict]:
    """Optimizer groups for the loss's trainable parameters: each submodule's own groups, else one default group."""
    groups, claimed = [], set()
    for module in loss_module.modules():
        own = getattr(module, "optimizer_param_groups", None)
        if callable(own):
            for group in own():
                params = [p for p in group["params"] if id(p) not in claimed]
                claimed.update(id(p) for p in params)
                if params:
                    groups.append({**group, "params": params})
    rest = [p for p in loss_module.parameters() if p.requires_grad and id(p) not in claimed]
    if rest:
        groups.append({"params": rest, "weight_decay": default_weight_decay})
    return groups


class LossGradients(TrainerCallback):
    """The loss module's gradients: averaged over data-parallel ranks before each optimizer step, cleared after it."""

    def __init__(self, loss_module: torch.nn.Module):
        self.loss_module = loss_module

    def on_train_begin(self, args, state, control, **kwargs):
        self.loss_module.zero_grad(set_to_none=True)  # the Trainer clears the model's here too

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        for p in self.loss_module.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()

    def on_optimizer_step(self, args, state, control, **kwargs):
        """Right after `optimizer.step()`, where the Trainer's `model.zero_grad()` clears the model's gradients."""
        self.loss_module.zero_grad(set_to_none=True)
