"""Robust DPO, rDPO (Chowdhury et al. 2024, "Provably Robust DPO", arXiv:2403.00409).

    L = [(1 - eps) * softplus(-beta * h) - eps * softplus(beta * h)] / (1 - 2 * eps),   h = rho(y_w) - rho(y_l)

with `rho(y) = S_theta(y) - S_ref(y)` the summed response log-ratio. If each label is flipped with probability
`eps`, this loss is an unbiased estimate of the DPO loss on clean labels. Unlike conservative DPO (DPO's
`label_smoothing`, which *adds* `eps * softplus(beta*h)`), rDPO *subtracts* it, so the loss is unbounded below for
large margins (its gradient stays bounded); negative loss values are expected.

Hyperparameters:
    beta: KL strength, as in DPO. Default 0.1; typical 0.01-0.5.
    label_smoothing: `eps`, the assumed label-flip rate, in [0, 0.5) (0.5 would divide by zero). Default 0.1;
        eps = 0 is plain DPO.

Implicit rewards (detached, for metrics): `beta * rho(y_w)` and `beta * rho(y_l)`.
Parity oracle: TRL `DPOTrainer(loss_type=["robust"], label_smoothing=eps)`.

Run: `po-train loss=robust loss.label_smoothing=0.2`.
"""

from __future__ import annotations

import torch.nn.functional as F

from losses.base import LossOutput, PairBatch, PreferenceLoss, check_in_range, check_positive, common_metrics


class RobustDPOLoss(PreferenceLoss):
    """Unbiased DPO under a known label-flip rate."""

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1):
        super().__init__()
        self.beta = check_positive("beta", beta)
        self.label_smoothing = check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.log_ratios()
        z = self.beta * (chosen - rejected)
        eps = self.label_smoothing
        per_pair = ((1 - eps) * F.softplus(-z) - eps * F.softplus(z)) / (1 - 2 * eps)
        rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        return LossOutput(per_pair, *rewards, metrics=common_metrics(batch, rewards))
