"""How well a policy ranks held-out lists: NDCG and Kendall tau between its implicit rewards and the given scores.

Implicit reward of a response: `rho(y) = S_theta(y) - S_ref(y)` (the summed log-ratio that DPO-family losses score;
both metrics depend on the order only, so beta does not matter), or the mean token log-prob `S_theta(y) / |y|` when
the run has no reference (SimPO's reward).

- `rank/ndcg`: DCG of the list sorted by reward, over the DCG of the list sorted by score; gains `2^(s - min s) - 1`
  (scores shifted so a list's lowest gain is 0), discount `1 / log2(1 + rank)`; 1 = the given order.
- `rank/kendall_tau`: Kendall's tau-b between rewards and scores over each list's present responses (ties in the
  scores count as neither concordant nor discordant); 1 = same order, -1 = reversed.
Each is a per-list value, averaged over the held-out lists (the evaluation loop prefixes them with `eval_`).
"""

from __future__ import annotations

import torch

from losses.base import ListBatch


def implicit_rewards(lists: ListBatch) -> torch.Tensor:
    """`[B, K]` rewards the policy assigns (see the module docstring)."""
    if lists.reference is not None:
        return lists.log_ratios().detach()
    return (lists.policy_sums() / lists.lengths).detach()


def ndcg(rewards: torch.Tensor, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """`[B]` NDCG of the order by `rewards` against the gains of `scores` (absent responses excluded)."""
    low = scores.masked_fill(~present, float("inf")).amin(-1, keepdim=True)
    gain = torch.where(present, torch.pow(2.0, scores - low) - 1, torch.zeros_like(scores))
    discount = 1.0 / torch.log2(torch.arange(2, scores.shape[1] + 2, dtype=scores.dtype, device=scores.device))

    def dcg(order_by: torch.Tensor) -> torch.Tensor:
        order = torch.sort(order_by.masked_fill(~present, float("-inf")), dim=-1, descending=True, stable=True).indices
        return (gain.gather(-1, order) * discount).sum(-1)

    return dcg(rewards) / dcg(scores).clamp(min=torch.finfo(scores.dtype).tiny)


def kendall_tau(rewards: torch.Tensor, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """`[B]` Kendall's tau-b between `rewards` and `scores` over the present responses of each list."""
    both = present.unsqueeze(2) & present.unsqueeze(1)
    upper = torch.ones_like(both).triu(1) & both
    ds = torch.sign(scores.unsqueeze(2) - scores.unsqueeze(1))
    dr = torch.sign(rewards.unsqueeze(2) - rewards.unsqueeze(1))
    products = (ds * dr * upper).sum((-1, -2))
    pairs_s = ((ds != 0) & upper).sum((-1, -2)).to(scores.dtype)
    pairs_r = ((dr != 0) & upper).sum((-1, -2)).to(scores.dtype)
    return products / (pairs_s * pairs_r).sqrt().clamp(min=torch.finfo(scores.dtype).tiny)


def ranking_metrics(lists: ListBatch) -> dict[str, torch.Tensor]:
    """Per-list `rank/ndcg` and `rank/kendall_tau` of a held-out batch (see the module docstring)."""
    rewards = implicit_rewards(lists).double()
    scores = lists.scores.double()
    return {"rank/ndcg": ndcg(rewards, scores, lists.present).float(),
            "rank/kendall_tau": kendall_tau(rewards, scores, lists.present).float()}
