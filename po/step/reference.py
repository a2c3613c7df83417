"""Where reference log-probs come from: a frozen model, the policy with adapters disabled, or nowhere.

Each source is a callable `(policy, batch, compute) -> [2B, L] log-probs`, where `compute(model)` runs the
shared chunked log-prob path on the batch. The trainer never asks which loss it trains; it asks the loss whether
it needs a reference, and the config picks the source (`reference=auto|model|adapter|none`).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from po.step.logprobs import unwrap

Compute = Callable[[torch.nn.Module], torch.Tensor]


class FrozenModelReference:
    """A frozen copy of the starting policy, in eval mode, run under `no_grad`."""

    def __init__(self, model: torch.nn.Module):
        model.eval()  # a DeepSpeed engine's eval() returns None: do not chain
        self.model = model.requires_grad_(False)

    def __call__(self, policy: torch.nn.Module, compute: Compute) -> torch.Tensor:
        with torch.no_grad():
            return compute(self.model)


class AdapterReference:
    """The PEFT policy with its adapters disabled: the base model, with no second copy in memory."""

    def __call__(self, policy: torch.nn.Module, compute: Compute) -> torch.Tensor:
        peft_model = unwrap(policy)
        with torch.no_grad(), peft_model.disable_adapter(), _eval_mode(policy):
            return compute(policy)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Dropout off for the reference pass, restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def resolve_strategy(name: str, needs_reference: bool, peft: str) -> str:
    """`auto` -> none for reference-free losses, adapter under PEFT, else a frozen model copy."""
    if name != "auto":
        return name
    if not needs_reference:
        return "none"
    return "adapter" if peft != "none" else "model"
