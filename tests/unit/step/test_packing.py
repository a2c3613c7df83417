"""One row per pair (po.step.layouts) gives the plain layout's log-probs and gradients, on Llama and Qwen2 shapes."""

from __future__ import annotations

import pytest
import torch

from losses.dpo import DPOLoss
from po.data.collate import PackedPairCollator, PairCollator
from po.models.policy import build_tiny_model
from po.models.tokenizer import load_tokenizer
from po.run.build import choose_collator
from po.step.layouts import packed_attention_mask, packed_response_masks, packed_token_logps, packing_support
from po.step.logprobs import response_masks, token_logps
from po.step.pair_batch import pair_loss
from po.step.reference import FrozenModelReference
from tests.helpers.runs import compose_cfg


def _model(arch: str):
    # The random init, as these tolerances (1e-5 absolute) were set for: from the warmed-up start a few float32
    # gradient entries of qwen2 differ by up to 1.9e-5 between the layouts.
    cfg = compose_cfg([f"model.architecture={arch}", "model.warmup.steps=0"])
    tok = load_tokenizer(cfg.model)
    return build_tiny_model(cfg.model, tok, seed=0).eval(), tok


def _examples(vocab: int, lengths: list[tuple[int, int, int]], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(5, vocab, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r), "row_id": i}
            for i, (p, c, r) in enumerate(lengths)]


CASES = {
    "very_different_lengths": [(3, 40, 2), (30, 1, 25), (1, 7, 60)],
    "one_pair": [(9, 13, 5)],
}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_equals_plain_values_and_gradients(arch, case):
    model, tok = _model(arch)
    examples = _examples(len(tok), CASES[case])
    plain = PairCollator(tok.pad_token_id)(examples)
    packed = PackedPairCollator(tok.pad_token_id)(examples)
    assert packed["input_ids"].shape[0] == len(examples)  # one row per pair

    def run(fn):
        model.zero_grad()
        values = fn()
        (values * torch.linspace(0.5, 1.5, values.numel()).view_as(values)).sum().backward()
        return values.detach(), [p.grad.clone() for p in model.parameters()]

    a, ga = run(lambda: token_logps(model, plain["input_ids"], plain["attention_mask"], plain["response_mask"],
                                    chunk_size=16))
    b, gb = run(lambda: packed_token_logps(model, packed, chunk_size=16))
    mask = response_masks(plain["response_mask"])
    assert torch.equal(packed_response_masks(packed), mask)
    assert a.shape == b.shape
    torch.testing.assert_close(b * mask, a * mask, atol=1e-5, rtol=0)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)


def test_packed_mask_blocks_chosen_from_rejected():
    """Row: prompt 3 (idx 0-2), chosen 2 (idx 3-4), dup last prompt token (5), rejected 2 (6-7), 1 pad (8)."""
    bounds = torch.tensor([[2, 5, 8]])
    allowed = packed_attention_mask(bounds, 9, torch.float32)[0, 0] == 0
    assert allowed[4, :5].all() and not allowed[4, 5:].any()        # chosen: causal over prompt and chosen
    assert allowed[7].tolist() == [1, 1, 0, 0, 0, 1, 1, 1, 0]      # rejected: P[:-1], own dup P[-1], R
    assert allowed[8].tolist() == [0] * 8 + [1]                     # padding attends to itself


def test_wrong_positions_are_caught():
    """The equality check has teeth: shifting the rejected part's position ids changes the values far beyond 1e-5."""
    model, tok = _model("llama")
    examples = _examples(len(tok), [(6, 8, 8)])
    packed = PackedPairCollator(tok.pad_token_id)(examples)
    good = packed_token_logps(model, packed).detach()
    packed["position_ids"] = torch.arange(packed["input_ids"].shape[1]).unsqueeze(0)
    bad = packed_token_logps(model, packed).detach()
    assert (good - bad).abs().max() > 1e-4  # 10x the equality tolerance of the tests above


def test_pair_loss_same_on_both_layouts():
    model, tok = _model("qwen2")
    examples = _examples(len(tok), CASES["very_different_lengths"], seed=3)
    ref_model, _ = _model("qwen2")
    with torch.no_grad():
        for p in ref_model.parameters():
            p.add_(0.01 * torch.randn_like(p))

    reference = FrozenModelReference(ref_model)
    out = [pair_loss(model, c(tok.pad_token_id)(examples), DPOLoss(beta=0.1), reference)
           for c in (PairCollator, PackedPairCollator)]
    torch.testing.assert_close(out[1].per_pair, out[0].per_pair, atol=1e-5, rtol=0)


def test_fallback_for_flash_attention(caplog):
    model, tok = _model("llama")
    assert packing_support(model) == (True, "")
    model.config._attn_implementation = "flash_attention_2"
    ok, why = packing_support(model)
    assert not ok and "4D" in why
    with caplog.at_level("WARNING"):
        collator = choose_collator(True, model, tok.pad_token_id)
    assert isinstance(collator, PairCollator) and "falling back" in caplog.text
