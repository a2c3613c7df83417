"""Hand-computed values, gradient direction and numerics of every loss on a fixed small PairBatch.

The batch (2 pairs; padded positions hold junk 9.0 that the masks must hide):

    pair 0: chosen 3 tokens, policy [-1, -2, -3] (S=-6), ref [-2, -3, -3] (S=-8)  -> rho_w = 2,  A_w = -2
            rejected 1 token, policy [-2]        (S=-2), ref [-1]         (S=-1)  -> rho_l = -1, A_l = -2
    pair 1: chosen 1 token,  policy [-4]         (S=-4), ref [-3]         (S=-3)  -> rho_w = -1, A_w = -4
            rejected 2 tokens, policy [-1, -5]   (S=-6), ref [-2, -2]     (S=-4)  -> rho_l = -2, A_l = -3

So the summed margin h = rho_w - rho_l = [3, 1]; the length-normalized margin
h' = rho_w/|y_w| - rho_l/|y_l| = [2/3 - (-1), -1 - (-1)] = [5/3, 0]; the SimPO mean difference A_w - A_l = [0, -1].

Run: `python -m pytest tests/unit/losses/test_losses.py -q`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses.base import PairBatch
from losses.dpo import DPOLoss
from losses.hinge import HingeLoss
from losses.ipo import IPOLoss
from losses.ln_dpo import LNDPOLoss
from losses.robust import RobustDPOLoss
from losses.simpo import SimPOLoss

J = 9.0  # junk in padded positions


def fixed_batch(requires_grad: bool = False) -> PairBatch:
    policy_chosen = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, J, J]], requires_grad=requires_grad)
    policy_rejected = torch.tensor([[-2.0, J], [-1.0, -5.0]], requires_grad=requires_grad)
    return PairBatch(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        chosen_mask=torch.tensor([[True, True, True], [True, False, False]]),
        rejected_mask=torch.tensor([[True, False], [True, True]]),
        ref_chosen=torch.tensor([[-2.0, -3.0, -3.0], [-3.0, J, J]]),
        ref_rejected=torch.tensor([[-1.0, J], [-2.0, -2.0]]),
    )


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.detach().float(), expected.float(), rtol=1e-6, atol=1e-6)


def test_dpo_hand_values():
    """beta 0.1: z = 0.1*h = [0.3, 0.1]; loss = softplus(-z) = [0.55436, 0.64440];
    rewards 0.1*rho: chosen [0.2, -0.1], rejected [-0.1, -0.2]; accuracy [1, 1]."""
    out = DPOLoss(beta=0.1)(fixed_batch())
    close(out.per_pair, F.softplus(-t(0.3, 0.1)))
    close(out.per_pair, t(0.554355, 0.644397))
    close(out.chosen_rewards, t(0.2, -0.1))
    close(out.rejected_rewards, t(-0.1, -0.2))
    close(out.metrics["rewards/accuracies"], t(1.0, 1.0))
    close(out.metrics["logps/chosen"], t(-6.0, -4.0))


def test_dpo_label_smoothing():
    """eps 0.2: loss = 0.8*softplus(-z) + 0.2*softplus(z), z = [0.3, 0.1] -> [0.61436, 0.66440] (softplus(z) =
    softplus(-z) + z). The loss's derivative in z, -0.8*sigmoid(-z) + 0.2*sigmoid(z), is zero at z* = log(0.8/0.2)
    = log 4: cDPO stops pushing a margin past z*, plain DPO never stops."""
    out = DPOLoss(beta=0.1, label_smoothing=0.2)(fixed_batch())
    close(out.per_pair, 0.8 * F.softplus(-t(0.3, 0.1)) + 0.2 * F.softplus(t(0.3, 0.1)))
    close(out.per_pair, t(0.614355, 0.664397))
    z = torch.tensor([math.log(4.0) - 0.5, math.log(4.0), math.log(4.0) + 0.5], requires_grad=True)

    def margin_batch():  # one-token pairs whose margin is z/beta, so that beta*h = z
        ones = torch.ones(3, 1, dtype=torch.bool)
        return PairBatch((z / 0.1).unsqueeze(-1), torch.zeros(3, 1), ones, ones, torch.zeros(3, 1), torch.zeros(3, 1))

    DPOLoss(beta=0.1, label_smoothing=0.2)(margin_batch()).per_pair.sum().backward()
    assert z.grad[0] < 0 and abs(z.grad[1]) < 1e-6 and z.grad[2] > 0  # below z*: push up; above: push down
    z.grad = None
    DPOLoss(beta=0.1)(margin_batch()).per_pair.sum().backward()
    assert (z.grad < 0).all()  # plain DPO keeps pushing


def test_ipo_hand_values():
    """beta (tau) 0.1 -> target 1/(2*0.1) = 5. Normalized: (h' - 5)^2 = [(5/3 - 5)^2, (0 - 5)^2] = [100/9, 25];
    rewards 0.1*rho/|y|: chosen [0.2/3, -0.1], rejected [-0.1, -0.1]. Summed: (h - 5)^2 = [4, 16],
    rewards 0.1*rho: chosen [0.2, -0.1], rejected [-0.1, -0.2]."""
    out = IPOLoss(beta=0.1)(fixed_batch())
    close(out.per_pair, t(100 / 9, 25.0))
    close(out.chosen_rewards, t(0.2 / 3, -0.1))
    close(out.rejected_rewards, t(-0.1, -0.1))
    close(out.metrics["rewards/accuracies"], t(1.0, 0.0))  # strict >: the tie in pair 1 is not a win
    summed = IPOLoss(beta=0.1, length_normalize=False)(fixed_batch())
    close(summed.per_pair, t(4.0, 16.0))
    close(summed.chosen_rewards, t(0.2, -0.1))


def test_ln_dpo_hand_values():
    """beta 5: z = 5*h' = [25/3, 0]; loss = softplus(-z) = [softplus(-25/3) = 2.4e-4, log 2];
    rewards 5*rho/|y|: chosen [10/3, -5], rejected [-5, -5]."""
    out = LNDPOLoss(beta=5.0)(fixed_batch())
    close(out.per_pair, F.softplus(-t(25 / 3, 0.0)))
    close(out.per_pair, t(2.4037e-4, math.log(2)))
    close(out.chosen_rewards, t(10 / 3, -5.0))
    close(out.rejected_rewards, t(-5.0, -5.0))


def test_hinge_hand_values():
    """beta 0.1: relu(1 - 0.1*h) = relu(1 - [0.3, 0.1]) = [0.7, 0.9]. beta 0.5: relu(1 - [1.5, 0.5]) = [0, 0.5]:
    pair 0 already clears the margin 1/beta = 2 and costs nothing."""
    close(HingeLoss(beta=0.1)(fixed_batch()).per_pair, t(0.7, 0.9))
    out = HingeLoss(beta=0.5)(fixed_batch())
    close(out.per_pair, t(0.0, 0.5))
    close(out.chosen_rewards, t(1.0, -0.5))


def test_robust_hand_values():
    """beta 0.1, eps 0.2, z = [0.3, 0.1]: [(0.8*softplus(-z) - 0.2*softplus(z))] / 0.6. With softplus(z) =
    softplus(-z) + z this is softplus(-z) - z/3 = [0.554355 - 0.1, 0.644397 - 0.033333] = [0.454355, 0.611064].
    eps 0 is plain DPO."""
    out = RobustDPOLoss(beta=0.1, label_smoothing=0.2)(fixed_batch())
    close(out.per_pair, (0.8 * F.softplus(-t(0.3, 0.1)) - 0.2 * F.softplus(t(0.3, 0.1))) / 0.6)
    close(out.per_pair, t(0.454355, 0.611064))
    close(RobustDPOLoss(beta=0.1, label_smoothing=0.0)(fixed_batch()).per_pair,
          DPOLoss(beta=0.1)(fixed_batch()).per_pair)


def test_simpo_hand_values_and_no_reference():
    """beta 2, ratio 0.5 -> gamma 1: z = 2*(A_w - A_l) - 1 = [2*0 - 1, 2*(-1) - 1] = [-1, -3];
    loss = softplus(-z) = [softplus(1), softplus(3)] = [1.31326, 3.04859]; rewards 2*A: chosen [-4, -8],
    rejected [-4, -6]. The reference values are never read: the same numbers come out without them."""
    batch = fixed_batch()
    batch.ref_chosen = batch.ref_rejected = None
    out = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5)(batch)
    close(out.per_pair, F.softplus(t(1.0, 3.0)))
    close(out.per_pair, t(1.313262, 3.048587))
    close(out.chosen_rewards, t(-4.0, -8.0))
    close(out.rejected_rewards, t(-4.0, -6.0))
    assert out.penalty is None
    assert SimPOLoss.needs_reference is False


def test_simpo_sft_term_is_the_penalty():
    """sft_weight 0.5: token-mean NLL of chosen = -A_w = [2, 4]; penalty = 0.5*[2, 4] = [1, 2], added to per_pair;
    `preference` (per_pair - penalty) is the plain SimPO loss [softplus(1), softplus(3)]."""
    out = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5, sft_weight=0.5)(fixed_batch())
    close(out.penalty, t(1.0, 2.0))
    close(out.per_pair, F.softplus(t(1.0, 3.0)) + t(1.0, 2.0))
    close(out.preference, F.softplus(t(1.0, 3.0)))
    close(out.metrics["sft_nll"], t(2.0, 4.0))
    # the SFT term follows the chosen side: on the swapped batch it is the NLL of the former rejected response
    swapped = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5, sft_weight=0.5)(fixed_batch().swapped())
    close(swapped.penalty, 0.5 * t(2.0, 3.0))  # A_l = [-2, -3]


ALL_LOSSES = {
    "dpo": lambda: DPOLoss(beta=0.1),
    "dpo_ls": lambda: DPOLoss(beta=0.1, label_smoothing=0.1),
    "ipo": lambda: IPOLoss(beta=0.1),
    "ipo_summed": lambda: IPOLoss(beta=0.1, length_normalize=False),
    "simpo": lambda: SimPOLoss(),
    "simpo_sft": lambda: SimPOLoss(sft_weight=0.5),
    "ln_dpo": lambda: LNDPOLoss(),
    "hinge": lambda: HingeLoss(beta=0.1),
    "robust": lambda: RobustDPOLoss(),
}


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradient_raises_chosen_and_lowers_rejected(name):
    """One descent step on the fixed batch (every pair below its loss's target margin, hinge active on both)
    raises every chosen response token's log-prob and lowers every rejected one; padded positions get no gradient."""
    batch = fixed_batch(requires_grad=True)
    ALL_LOSSES[name]()(batch).per_pair.sum().backward()
    step_chosen, step_rejected = -batch.policy_chosen.grad, -batch.policy_rejected.grad
    assert (step_chosen[batch.chosen_mask] > 0).all(), step_chosen
    assert (step_rejected[batch.rejected_mask] < 0).all(), step_rejected
    assert (step_chosen[~batch.chosen_mask] == 0).all() and (step_rejected[~batch.rejected_mask] == 0).all()


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("margin", [1e4, -1e4])
def test_extreme_margins_stay_finite(name, margin):
    """A pair whose chosen log-prob sum sits 1e4 above (or below) the rejected one, in the policy and so in every
    margin (summed, normalized, SimPO): loss, rewards and gradients are finite."""
    chosen = torch.tensor([[margin / 2, margin / 2], [0.0, 0.0]], requires_grad=True)
    rejected = torch.tensor([[0.0], [-margin]], requires_grad=True)
    batch = PairBatch(chosen, rejected, torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 1, dtype=torch.bool),
                      torch.zeros(2, 2), torch.zeros(2, 1))
    out = ALL_LOSSES[name]()(batch)
    assert out.per_pair.isfinite().all() and out.chosen_rewards.isfinite().all()
    out.per_pair.sum().backward()
    assert chosen.grad.isfinite().all() and rejected.grad.isfinite().all()


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_loss_is_unchanged_by_padding_width(name):
    """Extra all-masked columns (a wider batch) do not change any value: only response tokens count."""
    batch = fixed_batch()
    wide = PairBatch(F.pad(batch.policy_chosen, (0, 3), value=J), F.pad(batch.policy_rejected, (0, 2), value=J),
                     F.pad(batch.chosen_mask, (0, 3)), F.pad(batch.rejected_mask, (0, 2)),
                     F.pad(batch.ref_chosen, (0, 3), value=J), F.pad(batch.ref_rejected, (0, 2), value=J))
    close(ALL_LOSSES[name]()(wide).per_pair, ALL_LOSSES[name]()(batch).per_pair)
