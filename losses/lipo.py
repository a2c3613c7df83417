"""LiPO-lambda: listwise preference optimization with LambdaLoss weights (Liu et al. 2024, arXiv:2402.01878, Sec.
4.3, Eq. 6-7).

Each response `y_i` of a list has the implicit reward `s_i = beta * rho(y_i)` and a given score `psi_i` (higher =
better). Every pair the list orders is a logistic (DPO) term, weighted by how much swapping the two would change
the list's DCG under the model's current ranking:

    L = sum_{i,j: psi_i > psi_j} Delta_ij * softplus(-(s_i - s_j))
    Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|,   G_i = 2^psi_i - 1,   D(tau) = log2(1 + tau)

`tau_i` is the rank (1 = first) of `y_i` when the list is sorted by the detached rewards `s` (ties in `s`, as at the
first step where policy = reference, are broken by the given scores, then by position). `Delta` is a constant in
the backward pass, as in LambdaRank.

normalize (po's convention, default true): `Delta_ij` is divided by its mean over the list's pairs, so the weights
of a list average 1, the loss is on DPO's scale whatever the scale of the scores, and a list of two (or a pair) is
exactly DPO. normalize=false keeps the paper's raw weights (the log base then matters: base 2, as in NDCG).

Gains use the scores as given: `2^psi` spreads scores of 1-10 (UltraFeedback's overall score) much more than
scores of 1-5. Ties form no pair.

Hyperparameters:
    beta: strength of the implicit KL constraint, as in DPO. Default 0.1 (the paper's LiPO runs use 0.05).
    normalize: see above. Default true.

Implicit rewards (detached, for metrics): `s_i`; `chosen_rewards` / `rejected_rewards` are the best and the worst
response's. Oracle: a hand-computed weight table and `loss=dpo` at K = 2 (tests/unit/losses/test_listwise.py).

Run: `po-train loss=lipo data=jsonl data.path=ranked.jsonl`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.base import ListBatch, LossOutput, PreferenceLoss, check_positive, list_metrics


def predicted_ranks(rewards: torch.Tensor, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """`[B, K]` rank (1 = first) of each response sorted by `rewards` descending; ties by `scores` descending, then by
    position; absent responses after all present ones."""
    low = float("-inf")
    by_score = torch.sort(-scores.masked_fill(~present, low), dim=-1, stable=True).indices
    reward_in_score_order = rewards.masked_fill(~present, low).gather(-1, by_score)
    order = by_score.gather(-1, torch.sort(-reward_in_score_order, dim=-1, stable=True).indices)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=rewards.dtype).expand_as(rewards)
    return torch.empty_like(rewards).scatter_(-1, order, positions)


def lambda_weights(scores: torch.Tensor, rewards: torch.Tensor, present: torch.Tensor,
                   normalize: bool = True) -> torch.Tensor:
    """`[B, K, K]` weight `Delta_ij` of each pair `psi_i > psi_j` (zero elsewhere), see the module docstring."""
    scores = scores.to(rewards.dtype)
    gain = torch.pow(2.0, scores) - 1
    inverse_discount = 1.0 / torch.log2(1.0 + predicted_ranks(rewards, scores, present))
    ordered = present.unsqueeze(2) & present.unsqueeze(1) & (scores.unsqueeze(2) > scores.unsqueeze(1))
    delta = (gain.unsqueeze(2) - gain.unsqueeze(1)).abs() * (inverse_discount.unsqueeze(2)
                                                             - inverse_discount.unsqueeze(1)).abs()
    delta = torch.where(ordered, delta, torch.zeros_like(delta))
    if normalize:
        count = ordered.sum((-1, -2), keepdim=True).clamp(min=1)
        mean = delta.sum((-1, -2), keepdim=True) / count
        delta = delta / mean.clamp(min=torch.finfo(delta.dtype).tiny)
    return delta


class LiPOLambdaLoss(PreferenceLoss):
    """Lambda-weighted pairwise logistic loss over every pair a ranked list orders."""

    takes_lists = True

    def __init__(self, beta: float = 0.1, normalize: bool = True):
        super().__init__()
        self.beta = check_positive("beta", beta)
        self.normalize = bool(normalize)

    def forward_lists(self, batch: ListBatch) -> LossOutput:
        rewards = self.beta * batch.log_ratios()  # [B, K]
        weights = lambda_weights(batch.scores, rewards.detach(), batch.present, self.normalize)
        pairwise = F.softplus(-(rewards.unsqueeze(2) - rewards.unsqueeze(1)))  # [B, better, worse]
        per_list = (weights * pairwise).sum((-1, -2))
        metrics = list_metrics(batch, rewards)
        return LossOutput(per_list, metrics["rewards/chosen"], metrics["rewards/rejected"], metrics=metrics)
