"""Plackett-Luce DPO: DPO on a ranked list of K responses (Rafailov et al. 2023, arXiv:2305.18290, Appendix A.3,
Eq. 20-21).

Each response `y_k` of a list has the implicit reward `r_k = beta * rho(y_k)`, `rho(y) = S_theta(y) - S_ref(y)`
(summed response log-prob ratio). Under the Plackett-Luce model the given ranking `y_(1) > y_(2) > ... > y_(K)` has
probability `prod_k exp(r_(k)) / sum_{j >= k} exp(r_(j))`, and the loss is its negative log:

    L = - sum_k [ r_(k) - log sum_{j >= k} exp(r_(j)) ]

For K = 2 this is `softplus(-(r_(1) - r_(2)))`: DPO. The sum runs over the list (not a mean over positions), so a
list of K responses weighs like the K - 1 choices it contains.

Ties (equal scores) follow Breslow's convention: a response's denominator holds every response not ranked above it,
tied ones included. The loss is then symmetric in tied responses, and among them it is lowest when their rewards
are equal, so a tie is learned as a tie. A list whose responses all tie is dropped by the data pipeline.

Hyperparameters:
    beta: strength of the implicit KL constraint, as in DPO. Default 0.1; typical 0.01-0.5.

Implicit rewards (detached, for metrics): `r_k`; `chosen_rewards` / `rejected_rewards` are the best and the worst
response's. Oracle: brute-force enumeration of the Plackett-Luce permutation probability (K = 3), and `loss=dpo` at
K = 2 (tests/unit/losses/test_listwise.py). On pair data each pair is a list of two, so this is DPO there.

Run: `po-train loss=pl_dpo data=jsonl data.path=ranked.jsonl` (rows {"prompt", "responses", "scores"}).
"""

from __future__ import annotations

import torch

from losses.base import ListBatch, LossOutput, PreferenceLoss, check_positive, list_metrics


class PlackettLuceDPOLoss(PreferenceLoss):
    """Negative log Plackett-Luce probability of each list's ranking under the implicit DPO rewards."""

    takes_lists = True

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = check_positive("beta", beta)

    def forward_lists(self, batch: ListBatch) -> LossOutput:
        rewards = self.beta * batch.log_ratios()  # [B, K]
        scores, present = batch.scores, batch.present
        k = torch.arange(scores.shape[1], device=scores.device)
        # response i's denominator: every present j not ranked above i (and i itself, so no row is empty)
        members = (present.unsqueeze(1) & (scores.unsqueeze(1) <= scores.unsqueeze(2))) | (k.view(-1, 1) == k)
        log_denominator = torch.logsumexp(rewards.unsqueeze(1).masked_fill(~members, float("-inf")), dim=-1)
        terms = torch.where(present, rewards - log_denominator, torch.zeros_like(rewards))
        per_list = -terms.sum(-1)
        metrics = list_metrics(batch, rewards)
        return LossOutput(per_list, metrics["rewards/chosen"], metrics["rewards/rejected"], metrics=metrics)
