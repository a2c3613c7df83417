"""Ranked lists in the loss contract (losses/base.py) and the two listwise losses.

- `ListBatch.pairs` yields each response against every lower-scored one (ties: none), by indexing.
- A list of two under `loss=pl_dpo` or `loss=lipo` is `loss=dpo`, in values and gradients (1e-6).
- Plackett-Luce on K=3 equals the brute-force permutation probability; LiPO-lambda weights equal a hand table.

Run: `python -m pytest tests/unit/losses/test_listwise.py -q`.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from losses.base import SCORE_CHOSEN, SCORE_REJECTED, WEIGHT, ListBatch, PairBatch
from losses.dpo import DPOLoss
from losses.lcpo import LCPOWeighting
from losses.lipo import LiPOLambdaLoss, lambda_weights, predicted_ranks
from losses.pl_dpo import PlackettLuceDPOLoss


def one_token_lists(rewards: list[list[float]], scores: list[list[float]], present=None,
                    requires_grad: bool = False) -> tuple[ListBatch, torch.Tensor]:
    """Lists of one-token responses whose log-ratio is `rewards` (policy = rewards, reference = 0)."""
    policy = torch.tensor(rewards, dtype=torch.float64).unsqueeze(-1).requires_grad_(requires_grad)
    b, k = len(rewards), len(rewards[0])
    present = torch.ones(b, k, dtype=torch.bool) if present is None else torch.tensor(present, dtype=torch.bool)
    batch = ListBatch(policy, present.unsqueeze(-1).clone(), torch.tensor(scores, dtype=torch.float64), present,
                      torch.zeros(b, k, 1, dtype=torch.float64))
    return batch, policy


def random_pairs(seed: int = 0, b: int = 5) -> tuple[PairBatch, list[torch.Tensor]]:
    """Pairs of different lengths with random per-token values (junk where masked)."""
    g = torch.Generator().manual_seed(seed)
    lc, lr = 7, 4
    leaves = [torch.randn(b, lc, generator=g, dtype=torch.float64).requires_grad_(True),
              torch.randn(b, lr, generator=g, dtype=torch.float64).requires_grad_(True)]
    mc = torch.arange(lc) < torch.randint(1, lc + 1, (b, 1), generator=g)
    mr = torch.arange(lr) < torch.randint(1, lr + 1, (b, 1), generator=g)
    refs = [torch.randn(b, lc, generator=g, dtype=torch.float64), torch.randn(b, lr, generator=g, dtype=torch.float64)]
    return PairBatch(leaves[0], leaves[1], mc, mr, refs[0], refs[1], {WEIGHT: torch.rand(b, generator=g)}), leaves


# --- ListBatch ------------------------------------------------------------------------------------------------------

def test_pairs_of_a_list_are_indexed_not_recomputed():
    """List 0: scores [3, 1, 3, 0] -> pairs (0,1), (0,3), (1,3), (2,1), (2,3); 0 and 2 tie: no pair.
    List 1 has 3 responses (slot 3 absent, its score 9 must not count): scores [0, 2, 1] -> (1,0), (1,2), (2,0).
    mode=best: list 0's best is response 0 (first of the tied 3s) -> (0,1), (0,3); list 1 -> (1,0), (1,2)."""
    batch, policy = one_token_lists([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]],
                                    [[3, 1, 3, 0], [0, 2, 1, 9]], [[1, 1, 1, 1], [1, 1, 1, 0]], requires_grad=True)
    batch.extras = {WEIGHT: torch.tensor([0.5, 2.0]), "row_ids": torch.tensor([10, 11])}
    lists, better, worse = batch.pair_index("all")
    assert list(zip(lists.tolist(), better.tolist(), worse.tolist())) == [
        (0, 0, 1), (0, 0, 3), (0, 1, 3), (0, 2, 1), (0, 2, 3), (1, 1, 0), (1, 1, 2), (1, 2, 0)]
    pairs, index = batch.pairs("all")
    assert index.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert pairs.policy_chosen.squeeze(-1).tolist() == [1, 1, 2, 3, 3, 6, 6, 7]
    assert pairs.policy_rejected.squeeze(-1).tolist() == [2, 4, 4, 2, 4, 5, 7, 5]
    assert pairs.extras[WEIGHT].tolist() == [0.5] * 5 + [2.0] * 3
    assert pairs.extras["row_ids"].tolist() == [10] * 5 + [11] * 3
    assert pairs.extras[SCORE_CHOSEN].tolist() == [3, 3, 1, 3, 3, 2, 2, 1]
    assert pairs.extras[SCORE_REJECTED].tolist() == [1, 0, 0, 1, 0, 0, 1, 0]
    (pairs.policy_chosen.sum() - pairs.policy_rejected.sum()).backward()
    # each response's gradient sums over the pairs it is in: once computed, used several times
    assert policy.grad.squeeze(-1).tolist() == [[2, -1, 2, -3], [-2, 2, 0, 0]]
    best = batch.pair_index("best")
    assert list(zip(*(t.tolist() for t in best))) == [(0, 0, 1), (0, 0, 3), (1, 1, 0), (1, 1, 2)]
    with pytest.raises(ValueError, match="pair mode 'top'"):
        batch.pair_index("top")


def test_best_and_worst_skip_absent_responses():
    batch, _ = one_token_lists([[0.0] * 3] * 2, [[1, 5, 5], [2, -1, 7]], [[1, 1, 1], [1, 1, 0]])
    best, worst = batch.best_and_worst()
    assert best.tolist() == [1, 0] and worst.tolist() == [0, 1]


def test_from_pairs_is_a_list_of_two_and_back():
    pairs, _ = random_pairs()
    lists = ListBatch.from_pairs(pairs)
    assert lists.policy.shape == (5, 2, 7) and lists.scores.tolist() == [[1.0, 0.0]] * 5
    again, index = lists.pairs("all")
    assert index.tolist() == list(range(5))
    for a, b in ((again.policy_chosen, pairs.policy_chosen), (again.policy_rejected[:, :4], pairs.policy_rejected)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(again.log_ratios()[1], pairs.log_ratios()[1])


# --- K = 2 is DPO ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [PlackettLuceDPOLoss(beta=0.3), LiPOLambdaLoss(beta=0.3)], ids=["pl_dpo", "lipo"])
@pytest.mark.parametrize("scores", [(1.0, 0.0), (7.0, 2.5)], ids=["unit", "uf_scale"])
def test_a_list_of_two_is_dpo_in_values_and_gradients(loss, scores):
    """The same pairs, once as PairBatch under DPO, once as lists of two under the listwise loss (any scores)."""
    pairs, leaves = random_pairs(seed=1)
    dpo = DPOLoss(beta=0.3)(pairs)
    dpo.per_pair.sum().backward()
    expected = [leaf.grad.clone() for leaf in leaves]
    for leaf in leaves:
        leaf.grad = None
    lists = ListBatch.from_pairs(pairs)
    lists.scores = torch.tensor(scores, dtype=torch.float64).expand(5, 2)
    out = loss.forward_lists(lists)
    torch.testing.assert_close(out.per_pair, dpo.per_pair, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.chosen_rewards, dpo.chosen_rewards, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.rejected_rewards, dpo.rejected_rewards, rtol=0, atol=1e-6)
    for name in ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        torch.testing.assert_close(out.metrics[name], dpo.metrics[name], rtol=0, atol=1e-6)
    out.per_pair.sum().backward()
    for leaf, grad in zip(leaves, expected):
        torch.testing.assert_close(leaf.grad, grad, rtol=0, atol=1e-6)


def test_listwise_loss_on_a_pair_batch_scores_each_pair_as_a_list():
    pairs, _ = random_pairs(seed=2)
    torch.testing.assert_close(PlackettLuceDPOLoss(beta=0.1)(pairs).per_pair, DPOLoss(beta=0.1)(pairs).per_pair)


# --- Plackett-Luce ---------------------------------------------------------------------------------------------------

def permutation_probability(rewards: list[float], order: tuple[int, ...]) -> float:
    """prod_k exp(r_order[k]) / sum_{j >= k} exp(r_order[j]), written out."""
    p = 1.0
    for k in range(len(order)):
        p *= math.exp(rewards[order[k]]) / sum(math.exp(rewards[j]) for j in order[k:])
    return p


def test_plackett_luce_k3_is_the_brute_force_permutation_probability():
    """beta 0.5, log-ratios [0.4, 2.0, -1.0] -> rewards [0.2, 1.0, -0.5]; scores [5, 9, 1] rank 1 > 0 > 2.
    The six permutation probabilities sum to 1, and the loss is -log P(1, 0, 2). A fourth, absent response with
    any value changes nothing."""
    rho = [0.4, 2.0, -1.0]
    rewards = [0.5 * r for r in rho]
    probabilities = {order: permutation_probability(rewards, order) for order in itertools.permutations(range(3))}
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-12)
    expected = -math.log(probabilities[(1, 0, 2)])
    loss = PlackettLuceDPOLoss(beta=0.5)
    batch, _ = one_token_lists([rho], [[5, 9, 1]])
    assert loss.forward_lists(batch).per_pair.item() == pytest.approx(expected, abs=1e-12)
    padded, _ = one_token_lists([rho + [30.0]], [[5, 9, 1, 100]], [[1, 1, 1, 0]])
    assert loss.forward_lists(padded).per_pair.item() == pytest.approx(expected, abs=1e-12)
    out = loss.forward_lists(padded)
    assert out.chosen_rewards.item() == pytest.approx(1.0) and out.rejected_rewards.item() == pytest.approx(-0.5)


def test_plackett_luce_ties_share_a_denominator_and_are_symmetric():
    """Scores [2, 1, 1]: response 0 over the tied 1 and 2. Breslow: each tied response's denominator is both, so
    L = -[r0 - lse(r0, r1, r2)] - [r1 - lse(r1, r2)] - [r2 - lse(r1, r2)]. Swapping the tied responses' rewards
    leaves the loss unchanged, and at equal rewards their gradients are equal (the tie is learned as a tie)."""
    r = [0.3, -0.2, 0.5]
    batch, policy = one_token_lists([r], [[2, 1, 1]], requires_grad=True)
    loss = PlackettLuceDPOLoss(beta=1.0).forward_lists(batch).per_pair
    lse = lambda *xs: math.log(sum(math.exp(x) for x in xs))  # noqa: E731
    expected = -(r[0] - lse(*r)) - (r[1] - lse(r[1], r[2])) - (r[2] - lse(r[1], r[2]))
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    swapped, _ = one_token_lists([[r[0], r[2], r[1]]], [[2, 1, 1]])
    assert PlackettLuceDPOLoss(beta=1.0).forward_lists(swapped).per_pair.item() == pytest.approx(expected, abs=1e-12)
    equal, leaf = one_token_lists([[0.3, 0.1, 0.1]], [[2, 1, 1]], requires_grad=True)
    PlackettLuceDPOLoss(beta=1.0).forward_lists(equal).per_pair.sum().backward()
    assert leaf.grad[0, 1].item() == pytest.approx(leaf.grad[0, 2].item(), abs=1e-12)


# --- LiPO-lambda -----------------------------------------------------------------------------------------------------

def test_lipo_lambda_weights_equal_the_hand_table():
    """scores psi [2, 1, 0] -> gains G = 2^psi - 1 = [3, 1, 0]. Rewards s [0.1, 0.3, -0.2] rank the responses
    1, 0, 2, so tau = [2, 1, 3] and 1/log2(1 + tau) = [1/log2 3, 1, 1/2] = [0.630930, 1, 0.5].
        Delta_01 = |3 - 1| * |0.630930 - 1|   = 0.738140
        Delta_02 = |3 - 0| * |0.630930 - 0.5| = 0.392789
        Delta_12 = |1 - 0| * |1 - 0.5|        = 0.5
    normalize: divided by their mean 0.543643 -> [1.357766, 0.722513, 0.919721]."""
    scores, rewards = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[0.1, 0.3, -0.2]])
    present = torch.ones(1, 3, dtype=torch.bool)
    assert predicted_ranks(rewards, scores, present).tolist() == [[2.0, 1.0, 3.0]]
    inv = 1 / math.log2(3)
    raw = [[0, 2 * (1 - inv), 3 * (inv - 0.5)], [0, 0, 0.5], [0, 0, 0]]
    torch.testing.assert_close(lambda_weights(scores, rewards, present, normalize=False), torch.tensor([raw]))
    table = torch.tensor([[[0, 0.738140, 0.392789], [0, 0, 0.5], [0, 0, 0]]])
    torch.testing.assert_close(lambda_weights(scores, rewards, present, normalize=False), table, atol=1e-6, rtol=0)
    normalized = torch.tensor([[[0, 1.357766, 0.722513], [0, 0, 0.919721], [0, 0, 0]]])
    torch.testing.assert_close(lambda_weights(scores, rewards, present), normalized, atol=1e-6, rtol=0)


def test_lipo_ties_in_rewards_rank_by_scores_and_ties_in_scores_form_no_pair():
    """At the first step every reward is 0: the model's ranking is then the given one (scores [0, 2, 1] -> tau
    [3, 1, 2]). Tied scores (response 2 and 3) get weight 0; an absent response none."""
    scores = torch.tensor([[0.0, 2.0, 1.0, 1.0, 5.0]])
    present = torch.tensor([[True, True, True, True, False]])
    rewards = torch.zeros(1, 5)
    assert predicted_ranks(rewards, scores, present)[0, :4].tolist() == [4.0, 1.0, 2.0, 3.0]
    w = lambda_weights(scores, rewards, present)[0]
    assert w[2, 3] == 0 and w[3, 2] == 0 and w[:, 4].abs().sum() == 0 and w[4].abs().sum() == 0
    ordered = [(1, 0), (1, 2), (1, 3), (2, 0), (3, 0)]
    assert all(w[i, j] > 0 for i, j in ordered) and (w > 0).sum() == len(ordered)
    assert w.sum().item() == pytest.approx(len(ordered))  # normalized: weights average 1


def test_lipo_loss_is_the_weighted_sum_of_pair_terms():
    batch, _ = one_token_lists([[0.1, 0.3, -0.2]], [[2, 1, 0]])
    loss = LiPOLambdaLoss(beta=1.0, normalize=False).forward_lists(batch).per_pair.item()
    inv = 1 / math.log2(3)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    expected = 2 * (1 - inv) * sp(-(0.1 - 0.3)) + 3 * (inv - 0.5) * sp(-(0.1 + 0.2)) + 0.5 * sp(-(0.3 + 0.2))
    assert loss == pytest.approx(expected, abs=1e-9)


def test_lcpo_refuses_a_listwise_loss():
    with pytest.raises(ValueError, match="weighting=lcpo reweights pairs"):
        LCPOWeighting(PlackettLuceDPOLoss())
    assert not LCPOWeighting(DPOLoss()).takes_lists


def test_listwise_losses_reject_bad_beta():
    for cls in (PlackettLuceDPOLoss, LiPOLambdaLoss):
        with pytest.raises(ValueError, match="loss.beta must be > 0"):
            cls(beta=0.0)
