"""LN-DPO: length-normalized DPO (Ahrabian et al. 2024, "The Hitchhiker's Guide to Human Alignment with *PO",
arXiv:2407.15229).

    L = softplus(-beta * (rho(y_w)/|y_w| - rho(y_l)/|y_l|))

DPO on per-token mean log-ratios `rho(y)/|y|` (`rho(y) = S_theta(y) - S_ref(y)`, `|y|` the response token count
clamped to >= 1). It keeps the reference model but removes DPO's pull toward longer responses.

Hyperparameters:
    beta: KL strength on the *mean* log-ratio. Default 5.0 (Tulu 3's value for this loss); typical 1-10. Mean
        log-ratios are about |y| times smaller than sums, so beta sits |y| times above DPO's 0.1: do not reuse a
        DPO beta here.

Per-pair signals, as in DPO (losses/dpo.py): a margin `delta` (`softplus(-(beta * h' - delta))`) and a confidence
`c` (soft label `c`: `c * softplus(-z) + (1 - c) * softplus(z)`).

Implicit rewards (detached, for metrics): `beta * rho(y)/|y|`, the scores the loss compares (as open-instruct's
`dpo_norm`; TRL logs the summed `beta * rho(y)` instead).
Parity oracle: TRL `DPOTrainer(loss_type=["sigmoid_norm"])`; same maths as open-instruct's `dpo_norm`.

Run: `po-train loss=ln_dpo loss.beta=5.0`.
"""

from __future__ import annotations

import torch.nn.functional as F

from losses.base import (CONFIDENCE, MARGIN, LossOutput, PairBatch, PreferenceLoss, check_positive, common_metrics,
                         label_confidence, pair_margin)


class LNDPOLoss(PreferenceLoss):
    """Sigmoid DPO on length-normalized log-ratios, with per-pair margins and confidences."""

    signals = frozenset({MARGIN, CONFIDENCE})

    def __init__(self, beta: float = 5.0):
        super().__init__()
        self.beta = check_positive("beta", beta)

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.log_ratios()
        chosen = chosen / batch.chosen_lengths
        rejected = rejected / batch.rejected_lengths
        z = self.beta * (chosen - rejected) - pair_margin(batch, chosen)
        p = label_confidence(batch, 0.0, chosen)
        per_pair = F.softplus(-z) if isinstance(p, float) else p * F.softplus(-z) + (1 - p) * F.softplus(z)
        rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        return LossOutput(per_pair, *rewards, metrics=common_metrics(batch, rewards))
