"""Hinge (SLiC-style) preference loss (Zhao et al. 2023, SLiC-HF, arXiv:2305.10425; here with a reference model).

    L = relu(1 - beta * h),   h = rho(y_w) - rho(y_l)

with `rho(y) = S_theta(y) - S_ref(y)` the summed response log-ratio. A pair stops contributing once its margin
reaches `1/beta`, so the loss is zero (and the gradient vanishes) for pairs that are already well separated.

Hyperparameters:
    beta: inverse of the required margin in summed log-ratio units (margin = 1/beta). Default 0.1 (margin 10, TRL's
        default); typical 0.01-1.

Implicit rewards (detached, for metrics): `beta * rho(y_w)` and `beta * rho(y_l)`.
Parity oracle: TRL `DPOTrainer(loss_type=["hinge"])`.

Run: `po-train loss=hinge loss.beta=0.1`.
"""

from __future__ import annotations

import torch

from losses.base import LossOutput, PairBatch, PreferenceLoss, check_positive, common_metrics


class HingeLoss(PreferenceLoss):
    """Hinge loss on the summed log-ratio margin."""

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = check_positive("beta", beta)

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.log_ratios()
        per_pair = torch.relu(1.0 - self.beta * (chosen - rejected))
        rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        return LossOutput(per_pair, *rewards, metrics=common_metrics(batch, rewards))
