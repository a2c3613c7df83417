"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al. 2024, arXiv:2405.14734, Eq. 6).

    L = softplus(-(beta * (A_theta(y_w) - A_theta(y_l)) - gamma)),   gamma = beta * gamma_beta_ratio

with `A_theta(y) = S_theta(y) / |y|` the per-token mean response log-prob of the *policy* (`|y|` clamped to >= 1).
No reference model: `needs_reference = False`, so the trainer loads and runs none (reference=auto -> none).

Hyperparameters:
    beta: reward scale. Default 2.0; the authors' released settings use 2.0-10.
    gamma_beta_ratio: target margin divided by beta, `gamma / beta`, in mean log-prob units. Default 0.5; authors
        use 0.1-0.8. Note: TRL's `CPOTrainer(simpo_gamma=...)` takes the *absolute* gamma = beta * gamma_beta_ratio.
    sft_weight: weight of an added SFT term, the token-mean NLL of the chosen response, `-A_theta(y_w)`. Default 0
        (off); the authors' CPO-style variant uses a small positive value. It is returned in `LossOutput.penalty`
        (order-independent), so a weighting such as LCPO leaves it unweighted.

Per-pair signal: a margin `delta` (`data.extra_columns.margin`) adds to the target margin: `softplus(-(beta * (A_w -
A_l) - gamma - delta))`, as ODPO's offset does for DPO.

The learning rate is the most sensitive knob on real models (authors: 3e-7 to 1e-6).
Rewards logged: `beta * A_theta(y)` (as TRL's CPOTrainer with loss_type="simpo").
Parity oracle: TRL `trl.experimental.cpo.CPOTrainer(loss_type="simpo", cpo_alpha=0, simpo_gamma=beta*ratio)`.

Run: `po-train loss=simpo loss.beta=2.0 loss.gamma_beta_ratio=0.5`.
"""

from __future__ import annotations

import torch.nn.functional as F

from losses.base import (MARGIN, LossOutput, PairBatch, PreferenceLoss, check_in_range, check_positive,
                         common_metrics, pair_margin)


class SimPOLoss(PreferenceLoss):
    """Reference-free sigmoid loss on mean log-probs with a target margin, plus an optional SFT term."""

    needs_reference = False
    signals = frozenset({MARGIN})

    def __init__(self, beta: float = 2.0, gamma_beta_ratio: float = 0.5, sft_weight: float = 0.0):
        super().__init__()
        self.beta = check_positive("beta", beta)
        self.gamma_beta_ratio = check_in_range("gamma_beta_ratio", gamma_beta_ratio, 0.0, float("inf"))
        self.sft_weight = check_in_range("sft_weight", sft_weight, 0.0, float("inf"))

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.policy_sums()
        chosen = chosen / batch.chosen_lengths
        rejected = rejected / batch.rejected_lengths
        gamma = self.beta * self.gamma_beta_ratio
        per_pair = F.softplus(-(self.beta * (chosen - rejected) - gamma - pair_margin(batch, chosen)))
        rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        metrics = common_metrics(batch, rewards)
        penalty = None
        if self.sft_weight > 0:
            nll = -chosen
            penalty = self.sft_weight * nll
            per_pair = per_pair + penalty
            metrics["sft_nll"] = nll.detach()
        return LossOutput(per_pair, *rewards, metrics=metrics, penalty=penalty)
