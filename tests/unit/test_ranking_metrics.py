"""NDCG and Kendall tau of held-out lists (po/trainer/ranking.py) against hand-computed values.

Run: `python -m pytest tests/unit/test_ranking_metrics.py -q`.
"""

from __future__ import annotations

import math

import pytest
import torch

from losses.base import ListBatch
from po.trainer.ranking import kendall_tau, ndcg, ranking_metrics

T = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731


def test_ndcg_hand_values():
    """scores [2, 1, 0] -> gains [3, 1, 0]; ideal DCG = 3 + 1/log2(3). Rewards ranking 1, 0, 2: DCG = 1 + 3/log2(3).
    The given order gives 1; an absent 4th response with a huge reward changes nothing."""
    present = torch.ones(1, 3, dtype=torch.bool)
    ideal = 3 + 1 / math.log2(3)
    assert ndcg(T([[0.1, 0.3, -0.2]]), T([[2, 1, 0]]), present).item() == pytest.approx((1 + 3 / math.log2(3)) / ideal)
    assert ndcg(T([[5.0, 1.0, 0.0]]), T([[2, 1, 0]]), present).item() == pytest.approx(1.0)
    padded = torch.tensor([[True, True, True, False]])
    assert ndcg(T([[0.1, 0.3, -0.2, 99]]), T([[2, 1, 0, 7]]), padded).item() == pytest.approx(
        (1 + 3 / math.log2(3)) / ideal)
    # scores below zero are shifted: [-1, -3, -2] -> gains [3, 0, 1]
    assert ndcg(T([[1.0, 0.0, 0.5]]), T([[-1, -3, -2]]), present).item() == pytest.approx(1.0)


def test_kendall_tau_hand_values():
    """4 responses, scores [4, 3, 2, 1]; rewards order 0, 2, 1, 3: one discordant pair (1, 2) of 6 -> (5-1)/6."""
    present = torch.ones(1, 4, dtype=torch.bool)
    assert kendall_tau(T([[4, 2, 3, 1]]), T([[4, 3, 2, 1]]), present).item() == pytest.approx(4 / 6)
    assert kendall_tau(T([[1, 2, 3, 4]]), T([[4, 3, 2, 1]]), present).item() == pytest.approx(-1.0)
    # tau-b with a tie in the scores [2, 1, 1]: 2 concordant, 0 discordant, 2 score pairs of 3, 3 reward pairs
    three = torch.ones(1, 3, dtype=torch.bool)
    assert kendall_tau(T([[3, 2, 1]]), T([[2, 1, 1]]), three).item() == pytest.approx(2 / math.sqrt(2 * 3))


def test_ranking_metrics_use_log_ratios():
    policy = T([[[1.0], [3.0], [2.0]]])
    lists = ListBatch(policy, torch.ones(1, 3, 1, dtype=torch.bool), T([[3, 2, 1]]), torch.ones(1, 3, dtype=torch.bool),
                      T([[[0.0], [3.0], [0.0]]]))  # log-ratios [1, 0, 2]
    out = ranking_metrics(lists)
    assert out["rank/kendall_tau"].item() == pytest.approx(-1 / 3)  # (0,1) concordant; (0,2), (1,2) not
    assert 0 < out["rank/ndcg"].item() < 1
