"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7).

    L = (1 - eps) * softplus(-beta * h) + eps * softplus(beta * h),   h = rho(y_w) - rho(y_l)

with `rho(y) = S_theta(y) - S_ref(y)`, the *summed* response log-prob ratio of policy and reference.

Hyperparameters:
    beta: strength of the implicit KL constraint. Default 0.1 (paper; 0.5 for summarization); typical 0.01-0.5.
    label_smoothing: `eps`, the assumed rate of flipped labels (conservative DPO, cDPO). 0 = plain DPO; must be
        in [0, 0.5).

Implicit rewards (detached, for metrics): `beta * rho(y_w)` and `beta * rho(y_l)`.
Parity oracle: TRL `DPOTrainer(loss_type=["sigmoid"])` with eps = 0.

Run: `po-train loss=dpo loss.beta=0.1`.
"""

from __future__ import annotations

import torch.nn.functional as F

from losses.base import LossOutput, PairBatch, PreferenceLoss, check_in_range, check_positive, common_metrics


class DPOLoss(PreferenceLoss):
    """Sigmoid DPO with optional label smoothing (cDPO)."""

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        super().__init__()
        self.beta = check_positive("beta", beta)
        self.label_smoothing = check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.log_ratios()
        z = self.beta * (chosen - rejected)
        eps = self.label_smoothing
        per_pair = (1 - eps) * F.softplus(-z) + eps * F.softplus(z)
        rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        return LossOutput(per_pair, *rewards, metrics=common_metrics(batch, rewards))
