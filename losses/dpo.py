"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7).

    L = (1 - eps) * softplus(-beta * h) + eps * softplus(beta * h),   h = rho(y_w) - rho(y_l)

with `rho(y) = S_theta(y) - S_ref(y)`, the *summed* response log-prob ratio of policy and reference.

Hyperparameters:
    beta: strength of the implicit KL constraint. Default 0.1 (paper; 0.5 for summarization); typical 0.01-0.5.
    label_smoothing: `eps`, the assumed rate of flipped labels (conservative DPO, cDPO). 0 = plain DPO; must be
        in [0, 0.5).

Per-pair signals (`signals`, data columns named by `data.extra_columns`):
    margin `delta` (ODPO, Amini et al. 2024, arXiv:2402.10571, Eq. 5): `z = beta * h - delta`; 0 = DPO.
    confidence `c` in [0, 1], P(the label is right) (cDPO with a per-pair eps = 1 - c; CREAM's consistency, Wang et
        al. 2024, arXiv:2410.12735): the soft label `p = (1 - eps) * c + eps * (1 - c)` replaces `1 - eps`, so
        `L = p * softplus(-z) + (1 - p) * softplus(z)`; c = 1 is the loss without the column.

Implicit rewards (detached, for metrics): `beta * rho(y_w)` and `beta * rho(y_l)`.
Parity oracle: TRL `DPOTrainer(loss_type=["sigmoid"])` with eps = 0.

Run: `po-train loss=dpo loss.beta=0.1` (with a margin column: `data.extra_columns.margin=NAME`).
"""

from __future__ import annotations

import torch.nn.functional as F

from losses.base import (CONFIDENCE, MARGIN, LossOutput, PairBatch, PreferenceLoss, check_in_range, check_positive,
                         common_metrics, label_confidence, pair_margin)


class DPOLoss(PreferenceLoss):
    """Sigmoid DPO with optional label smoothing (cDPO), per-pair margins (ODPO) and per-pair confidences."""

    signals = frozenset({MARGIN, CONFIDENCE})

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        super().__init__()
        self.beta = check_positive("beta", beta)
        self.label_smoothing = check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.log_ratios()
        z = self.beta * (chosen - rejected) - pair_margin(batch, chosen)
        p = label_confidence(batch, self.label_smoothing, chosen)
        per_pair = p * F.softplus(-z) + (1 - p) * F.softplus(z)
        rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        return LossOutput(per_pair, *rewards, metrics=common_metrics(batch, rewards))
