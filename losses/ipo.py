"""IPO: Identity Preference Optimization (Azar et al. 2023, arXiv:2310.12036, Eq. 17).

    L = (h' - 1 / (2 * tau))^2,   tau = beta

IPO regresses the log-ratio margin onto a fixed target `1/(2*tau)` instead of pushing it to infinity, so it does
not overfit deterministic preferences the way DPO can.

    length_normalize=true  (default): h' = rho(y_w)/|y_w| - rho(y_l)/|y_l|   (per-token mean log-ratios)
    length_normalize=false:           h' = rho(y_w) - rho(y_l)               (summed, as in the original DPO code)

with `rho(y) = S_theta(y) - S_ref(y)` and `|y|` the response token count (clamped to >= 1).

Hyperparameters:
    beta: tau, the regularization strength; the target margin is 1/(2*beta). Default 0.1; typical 0.01-1. With
        summed log-ratios the margin grows with response length, so summed IPO usually needs a smaller target
        (larger beta) than the normalized form.
    length_normalize: see above. The normalized form is TRL's, said by TRL to follow the authors' advice; the paper
        itself does not discuss it.

Label smoothing does not apply. Implicit rewards (detached, for metrics): `beta * rho(y)/|y|` when normalized,
`beta * rho(y)` when summed, i.e. beta times the score the loss compares (TRL always logs `beta * rho(y)`).
Parity oracle: TRL `DPOTrainer(loss_type=["ipo"])` (normalized form).

Run: `po-train loss=ipo loss.beta=0.1`.
"""

from __future__ import annotations

from losses.base import LossOutput, PairBatch, PreferenceLoss, check_positive, common_metrics


class IPOLoss(PreferenceLoss):
    """Squared-error IPO on (by default length-normalized) log-ratio margins."""

    def __init__(self, beta: float = 0.1, length_normalize: bool = True):
        super().__init__()
        self.beta = check_positive("beta", beta)
        self.length_normalize = bool(length_normalize)

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.log_ratios()
        if self.length_normalize:
            chosen = chosen / batch.chosen_lengths
            rejected = rejected / batch.rejected_lengths
        per_pair = (chosen - rejected - 1.0 / (2.0 * self.beta)) ** 2
        rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        return LossOutput(per_pair, *rewards, metrics=common_metrics(batch, rewards))
