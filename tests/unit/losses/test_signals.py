"""Per-pair signals (losses/base.py: WEIGHT, MARGIN, CONFIDENCE): a weight column for any loss (applied by the step),
the ODPO margin and the per-pair cDPO confidence in dpo, and the config-time refusal of a signal a loss ignores.

Run: `python -m pytest tests/unit/losses/test_signals.py -q`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losses.base import CONFIDENCE, MARGIN, WEIGHT, PairBatch
from losses.dpo import DPOLoss
from losses.ipo import IPOLoss
from losses.ln_dpo import LNDPOLoss
from po.errors import ConfigError
from po.run.validate import validate
from po.step.list_batch import weighted_mean
from tests.helpers.runs import compose_cfg


def pairs(seed: int = 0, b: int = 6, **extras) -> tuple[PairBatch, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(b, 5, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(2)]
    mask = torch.arange(5) < torch.randint(1, 6, (b, 1), generator=g)
    refs = [torch.randn(b, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    return PairBatch(leaves[0], leaves[1], mask, mask.clone(), refs[0], refs[1], dict(extras)), leaves


def grads(loss_value: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss_value, leaves))


def test_weight_of_ones_is_the_plain_loss_and_weight_zero_gives_no_gradient():
    batch, leaves = pairs()
    plain = DPOLoss()(batch).per_pair
    ones = torch.ones(6, dtype=torch.float64)
    assert torch.equal(weighted_mean(plain, ones), plain.mean())
    for a, b in zip(grads(weighted_mean(DPOLoss()(batch).per_pair, ones), leaves),
                    grads(DPOLoss()(batch).per_pair.mean(), leaves)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    w = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    g = grads(weighted_mean(IPOLoss()(batch).per_pair, w), leaves)  # any loss, not only dpo
    for t in g:
        assert t[1].abs().sum() == 0 and t[3].abs().sum() == 0 and t[0].abs().sum() > 0


def test_margin_zero_is_dpo_and_a_margin_is_the_odpo_offset():
    batch, leaves = pairs(seed=1)
    dpo = DPOLoss(beta=0.2)(batch).per_pair
    zero, _ = pairs(seed=1, **{MARGIN: torch.zeros(6)})
    torch.testing.assert_close(DPOLoss(beta=0.2)(zero).per_pair, dpo, atol=1e-12, rtol=0)
    delta = torch.tensor([0.0, 0.5, 1.0, -1.0, 2.0, 0.1])
    shifted, _ = pairs(seed=1, **{MARGIN: delta})
    chosen, rejected = batch.log_ratios()
    expected = -F.logsigmoid(0.2 * (chosen - rejected) - delta.double())  # ODPO: -log sigmoid(beta*h - delta)
    torch.testing.assert_close(DPOLoss(beta=0.2)(shifted).per_pair, expected, atol=1e-12, rtol=0)


def test_constant_confidence_is_cdpo():
    """Confidence c = 1 - eps on every pair equals DPO with label_smoothing = eps (cDPO), values and gradients; a
    per-pair confidence of 1 is plain DPO on that pair."""
    eps = 0.2
    batch, leaves = pairs(seed=2, **{CONFIDENCE: torch.full((6,), 1 - eps, dtype=torch.float64)})
    plain, leaves2 = pairs(seed=2)
    a, b = DPOLoss(beta=0.1)(batch).per_pair, DPOLoss(beta=0.1, label_smoothing=eps)(plain).per_pair
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    for x, y in zip(grads(a.sum(), leaves), grads(b.sum(), leaves2)):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=0)
    mixed, _ = pairs(seed=2, **{CONFIDENCE: torch.tensor([1.0, 0.5, 1.0, 0.0, 1.0, 1.0])})
    out, dpo = DPOLoss()(mixed).per_pair, DPOLoss()(plain).per_pair
    torch.testing.assert_close(out[[0, 2, 4, 5]], dpo[[0, 2, 4, 5]], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[3], DPOLoss()(plain.swapped()).per_pair[3], atol=1e-12, rtol=0)  # c=0: flipped
    assert LNDPOLoss.signals == {MARGIN, CONFIDENCE}


@pytest.mark.parametrize("overrides, message", [
    (["loss=ipo", "data.extra_columns.margin=delta"], "data.extra_columns.margin=delta: losses.ipo.IPOLoss does not "
                                                       "read a per-pair margin"),
    (["loss=pl_dpo", "data.extra_columns.confidence=c"], "does not read a per-pair confidence (it takes: none)"),
    (["loss=simpo", "data.strength_as=margin", "data.format=helpsteer2"], None),
    (["loss=ipo", "data.strength_as=margin"], "data.strength_as=margin: losses.ipo.IPOLoss does not read"),
])
def test_a_signal_the_loss_ignores_is_refused_at_config_time(overrides, message):
    cfg = compose_cfg(["data=jsonl", "data.path=x.jsonl", *overrides])
    if message is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    validate(compose_cfg(["data=jsonl", "data.path=x.jsonl", "loss=ipo", f"data.extra_columns.{WEIGHT}=w"]))
