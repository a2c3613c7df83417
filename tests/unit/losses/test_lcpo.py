"""LCPO weighting (losses/lcpo.py): the E/M-step maths, the eta state, and its update over the global batch."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch

from losses.base import PairBatch
from losses.dpo import DPOLoss
from losses.lcpo import ETA_MAX, ETA_MIN, LCPOWeighting, m_step


def pairs(h: list[float], annotator: list[int] | None = None, requires_grad: bool = False) -> PairBatch:
    """One response token per side: policy chosen log-prob = h, everything else 0, so `rho_w - rho_l = h`."""
    pc = torch.tensor(h, dtype=torch.float32).view(-1, 1).requires_grad_(requires_grad)
    zeros = torch.zeros_like(pc.detach())
    mask = torch.ones_like(zeros, dtype=torch.bool)
    extras = {} if annotator is None else {"annotator": torch.tensor(annotator)}
    return PairBatch(pc, zeros, mask, mask, zeros, zeros, extras=extras)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_dpo_delta_is_beta_times_margin():
    """DPO beta 0.5, h = [1, -2, 3]: L_orig = softplus(-0.5h), L_swap = softplus(0.5h), and
    softplus(z) - softplus(-z) = z, so Delta = [0.5, -1, 1.5]."""
    lcpo = LCPOWeighting(DPOLoss(beta=0.5))
    _, delta = lcpo.evaluate_both(pairs([1.0, -2.0, 3.0]))
    torch.testing.assert_close(delta, torch.tensor([0.5, -1.0, 1.5]))


def test_dpo_loss_is_w_mix_of_orig_and_swapped():
    """eta 0.9, Delta = 0.5h = [0.5, -1, 1.5]: w = sigmoid(Delta + logit 0.9) = sigmoid([2.697, 1.197, 3.697])
    = [0.9368, 0.7680, 0.9758]; L = w*softplus(-Delta) + (1-w)*softplus(Delta) = w*L_orig + (1-w)*L_swap."""
    batch = pairs([1.0, -2.0, 3.0])
    dpo = DPOLoss(beta=0.5)
    out = LCPOWeighting(dpo, eta_init=0.9)(batch)
    w = torch.tensor([1 / (1 + math.exp(-(d + logit(0.9)))) for d in (0.5, -1.0, 1.5)])
    torch.testing.assert_close(out.metrics["lcpo/w_mean"], w)
    torch.testing.assert_close(w, torch.tensor([0.9368, 0.7680, 0.9758]), atol=1e-4, rtol=0)
    expected = w * dpo(batch).per_pair + (1 - w) * dpo(batch.swapped()).per_pair
    torch.testing.assert_close(out.per_pair, expected)
    torch.testing.assert_close(out.metrics["lcpo/frac_w_below_half"], torch.zeros(3))
    torch.testing.assert_close(out.metrics["lcpo/w_min"], w.min())
    # Rewards and accuracy come from the as-labelled evaluation: pair 2 (h < 0) is wrong.
    torch.testing.assert_close(out.metrics["rewards/accuracies"], torch.tensor([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_w_frozen_at_one_minus_eps_is_conservative_dpo(eps):
    """w = 1-eps: (1-eps)*softplus(-beta h) + eps*softplus(beta h), which is cDPO with label_smoothing = eps."""
    batch = pairs([1.0, -2.0, 3.0, 0.0])
    _, delta = LCPOWeighting(DPOLoss(beta=0.5)).evaluate_both(batch)
    frozen = m_step(delta, torch.full_like(delta, 1 - eps))
    torch.testing.assert_close(frozen, DPOLoss(beta=0.5, label_smoothing=eps)(batch).per_pair)


def test_w_carries_no_gradient():
    """dL/dh for L = w*softplus(-beta h) + (1-w)*softplus(beta h) with w constant is beta*(sigmoid(beta h) - w).
    If gradient flowed through w = sigmoid(beta h + logit eta), extra terms would appear."""
    beta, h = 0.5, [1.0, -2.0, 3.0]
    batch = pairs(h, requires_grad=True)
    out = LCPOWeighting(DPOLoss(beta=beta))(batch)
    out.per_pair.sum().backward()
    z = beta * torch.tensor(h)
    w = torch.sigmoid(z + logit(0.9))
    torch.testing.assert_close(batch.policy_chosen.grad.view(-1), beta * (torch.sigmoid(z) - w))
    assert not out.metrics["lcpo/w_mean"].requires_grad


def test_penalty_stays_outside_the_weighting():
    """A base loss with an order-independent penalty p: L = m_step(Delta, w) + p, Delta unaffected by p."""

    class Penalized(DPOLoss):
        def forward(self, batch):
            out = super().forward(batch)
            penalty = torch.full_like(out.per_pair, 0.25)
            out.per_pair, out.penalty = out.per_pair + penalty, penalty
            return out

    batch = pairs([1.0, -2.0])
    out = LCPOWeighting(Penalized(beta=0.5))(batch)
    plain = LCPOWeighting(DPOLoss(beta=0.5))(batch)
    torch.testing.assert_close(out.per_pair, plain.per_pair + 0.25)


def test_eta_update_is_ema_of_mean_w_and_clamped():
    """alpha 0.5: eta <- 0.5*0.9 + 0.5*mean(w). Huge positive Delta (w = 1) pushes eta to 1-1e-4 at most;
    huge negative Delta (w = 0) pushes it to 1e-4 at least."""
    lcpo = LCPOWeighting(DPOLoss(beta=1.0), eta_init=0.9, alpha=0.5)
    w = lcpo(pairs([1.0, -1.0])).metrics["lcpo/w_mean"]
    lcpo.after_optimizer_step()
    assert lcpo.eta.item() == pytest.approx(0.5 * 0.9 + 0.5 * w.double().mean().item(), abs=1e-7)
    for _ in range(60):
        lcpo(pairs([500.0, 800.0]))
        lcpo.after_optimizer_step()
        assert ETA_MIN <= lcpo.eta.item() <= ETA_MAX
    assert lcpo.eta.item() == pytest.approx(ETA_MAX)
    for _ in range(60):
        lcpo(pairs([-500.0, -800.0]))
        lcpo.after_optimizer_step()
        assert ETA_MIN <= lcpo.eta.item() <= ETA_MAX
    assert lcpo.eta.item() == pytest.approx(ETA_MIN)
    with pytest.raises(ValueError, match="eta_init"):
        LCPOWeighting(DPOLoss(), eta_init=1.0)


def test_update_covers_all_micro_batches_and_skips_eval():
    """Two micro-batches then one step equal one batch of both; no-grad (evaluation) forwards do not count."""
    h = [2.0, -1.0, 0.5, -3.0, 1.0, 4.0]
    split = LCPOWeighting(DPOLoss(beta=1.0))
    split(pairs(h[:2]))
    split(pairs(h[2:]))
    with torch.no_grad():
        split(pairs([-50.0] * 4))  # an evaluation in between: ignored
    split.after_optimizer_step()
    whole = LCPOWeighting(DPOLoss(beta=1.0))
    whole(pairs(h))
    whole.after_optimizer_step()
    torch.testing.assert_close(split.eta, whole.eta)
    assert split.eta.item() != pytest.approx(0.9)


def test_per_annotator_eta_and_unseen_annotator_uses_mean():
    """Annotator 0 only sends h = +20 (w ~ 1), annotator 1 only h = -20 (w ~ 1e-8), annotator 2 sends nothing:
    after one step with alpha 0.5, eta = [~0.95, ~0.45, 0.9]. An unseen id (-1) gets eta = mean of the three."""
    lcpo = LCPOWeighting(DPOLoss(beta=1.0), alpha=0.5, annotator_column="who", num_annotators=3,
                         annotator_names=["ann", "bob", "cy"])
    lcpo(pairs([20.0, -20.0, 20.0], annotator=[0, 1, 0]))
    lcpo.after_optimizer_step()
    torch.testing.assert_close(lcpo.eta, torch.tensor([0.95, 0.45, 0.9], dtype=torch.float64), atol=1e-4, rtol=0)
    out = lcpo(pairs([0.0, 0.0], annotator=[-1, 2]))
    mean_eta = lcpo.eta.mean()
    torch.testing.assert_close(out.metrics["lcpo/w_mean"], torch.tensor([mean_eta, 0.9]).float())
    assert set(out.metrics) >= {"lcpo/eta/ann", "lcpo/eta/bob", "lcpo/eta/cy", "lcpo/eta"}
    with pytest.raises(ValueError, match="annotator"):
        lcpo(pairs([0.0]))


def test_state_dict_holds_eta_only():
    """The trainer checkpoints `state_dict()`: eta is in it, the per-step accumulators are not."""
    lcpo = LCPOWeighting(DPOLoss(), eta_init=0.7)
    assert set(lcpo.state_dict()) == {"eta"}
    other = LCPOWeighting(DPOLoss())
    other.load_state_dict(lcpo.state_dict())
    assert other.eta.item() == 0.7


# --- two processes (gloo) against one: same global batch, same eta -------------------------------------------

GLOBAL_H = [[2.0, -1.0, 0.5, -3.0, 1.0, 4.0, -0.5, 2.5], [1.5, -2.0, 3.0, -0.2, 0.7, -4.0, 2.2, 0.1]]
GLOBAL_ANN = [[0, 1, 0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 1, 0, 0, 1]]  # rank 1's second step has no annotator 1


def _steps(lcpo: LCPOWeighting, shards: list[tuple[slice, ...]]) -> torch.Tensor:
    for step, (h, ann) in enumerate(zip(GLOBAL_H, GLOBAL_ANN)):
        for micro in shards:  # gradient-accumulation micro-batches of this process
            lcpo(pairs(h[micro], annotator=ann[micro]))
        lcpo.after_optimizer_step()
    return lcpo.eta.clone()


def _rank_main(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        lcpo = LCPOWeighting(DPOLoss(beta=1.0), annotator_column="a", num_annotators=2, alpha=0.3)
        # rank r holds pairs [4r, 4r+4) of every global batch, in two micro-batches of 2
        out[rank] = _steps(lcpo, [slice(4 * rank, 4 * rank + 2), slice(4 * rank + 2, 4 * rank + 4)])
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process():
    """Two gloo ranks x two micro-batches of 2 pairs = one process with batches of 8: the same eta."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_main, args=(2, port, out), nprocs=2, join=True)
        two = dict(out)
    one = _steps(LCPOWeighting(DPOLoss(beta=1.0), annotator_column="a", num_annotators=2, alpha=0.3),
                 [slice(0, 8)])
    torch.testing.assert_close(two[0], one, rtol=0, atol=1e-12)
    torch.testing.assert_close(two[1], one, rtol=0, atol=1e-12)
    # this rank-local mean would differ: the test can tell a missing all-reduce apart
    local = _steps(LCPOWeighting(DPOLoss(beta=1.0), annotator_column="a", num_annotators=2, alpha=0.3),
                   [slice(0, 2), slice(2, 4)])
    assert (local - one).abs().max() > 1e-3
