"""One packed row per ranked list (po/step/list_layouts.py) equals one row per response, values and gradients, on
Llama and Qwen2 shapes; a pairwise loss on lists equals the same loss on the exploded pairs; weights.

Run: `python -m pytest tests/unit/step/test_list_packing.py -q`.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from losses.dpo import DPOLoss
from losses.lcpo import LCPOWeighting
from losses.lipo import LiPOLambdaLoss
from losses.pl_dpo import PlackettLuceDPOLoss
from losses.simpo import SimPOLoss
from po.data.collate import PairCollator
from po.data.list_collate import ListCollator, PackedListCollator
from po.models.policy import build_tiny_model
from po.models.tokenizer import load_tokenizer
from po.step.list_batch import list_batch, step_output
from po.step.list_layouts import list_attention_mask, list_response_masks, list_token_logps
from po.step.pair_batch import pair_batch
from po.step.reference import FrozenModelReference
from tests.helpers.runs import compose_cfg


def _model(arch: str, seed: int = 0):
    # The random init, as these tolerances (1e-5 absolute) were set for: from the warmed-up start a few float32
    # gradient entries of qwen2 differ by up to 1.9e-5 between the layouts.
    cfg = compose_cfg([f"model.architecture={arch}", "model.warmup.steps=0"])
    tok = load_tokenizer(cfg.model)
    return build_tiny_model(cfg.model, tok, seed=seed).eval(), tok


def _lists(vocab: int, shapes: list[tuple[int, list[int]]], seed: int = 0) -> list[dict]:
    """(prompt length, response lengths) per list; scores descending with one tie in lists of 4+."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(5, vocab, (n,), generator=g).tolist()

    out = []
    for i, (p, lengths) in enumerate(shapes):
        scores = [float(len(lengths) - k) for k in range(len(lengths))]
        if len(lengths) >= 4:
            scores[2] = scores[1]
        out.append({"prompt_ids": ids(p), "response_ids": [ids(n) for n in lengths], "scores": scores,
                    "chosen_ids": [], "rejected_ids": [], "row_id": i})
    return out


CASES = {
    "very_different_lengths": [(3, [40, 2, 17, 1]), (30, [1, 25]), (1, [7, 60, 3])],
    "one_list": [(9, [13, 5, 8, 2])],
}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_list_equals_separate_rows_values_and_gradients(arch, case):
    model, tok = _model(arch)
    examples = _lists(len(tok), CASES[case])
    plain = ListCollator(tok.pad_token_id)(examples)
    packed = PackedListCollator(tok.pad_token_id)(examples)
    assert packed["input_ids"].shape[0] == len(examples)  # one row per list
    assert plain["input_ids"].shape[0] == sum(len(e["response_ids"]) for e in examples)  # one row per response

    def run(inputs):
        model.zero_grad()
        values = list_token_logps(model, inputs, chunk_size=16)
        (values * torch.linspace(0.5, 1.5, values.numel()).view_as(values)).sum().backward()
        return values.detach(), [p.grad.clone() for p in model.parameters()]

    a, ga = run(plain)
    b, gb = run(packed)
    mask = list_response_masks(plain)
    assert torch.equal(list_response_masks(packed), mask)
    assert mask.sum().item() == sum(len(r) for e in examples for r in e["response_ids"])
    torch.testing.assert_close(b * mask, a * mask, atol=1e-5, rtol=0)
    assert (a * mask).abs().sum() > 0
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)


def test_list_mask_sees_prompt_and_own_part_only():
    """Row: prompt 3 (0-2; part 0 starts at its P[-1], index 2), y1 2 tokens (3-4), part 1 at 5 (P[-1] copy), y2 1
    token (6), part 2 at 7, y3 1 token (8), padding (9). Part 2 sees P[:-1] = 0, 1 and its own 7, 8."""
    allowed = list_attention_mask(torch.tensor([[2, 5, 7, 9]]), 10, torch.float32)[0, 0] == 0
    assert allowed[4].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert allowed[6].tolist() == [1, 1, 0, 0, 0, 1, 1, 0, 0, 0]
    assert allowed[8].tolist() == [1, 1, 0, 0, 0, 0, 0, 1, 1, 0]
    assert allowed[9].tolist() == [0] * 9 + [1]


def test_wrong_positions_are_caught():
    """The equality has teeth: shifting one part's position ids changes values far beyond 1e-5."""
    model, tok = _model("llama")
    examples = _lists(len(tok), [(6, [8, 8, 8])])
    packed = PackedListCollator(tok.pad_token_id)(examples)
    plain = ListCollator(tok.pad_token_id)(examples)
    with torch.no_grad():
        good = list_token_logps(model, packed)
        packed["position_ids"][0, -4:] += 3
        bad = list_token_logps(model, packed)
        ref = list_token_logps(model, plain)
    torch.testing.assert_close(good, ref, atol=1e-5, rtol=0)
    assert (bad - ref).abs().max() > 1e-4  # 10x the equality tolerance of the tests above


def _exploded(examples: list[dict]) -> list[dict]:
    """Every ordered pair (higher score, lower score) of every list as a pair row, in ListBatch.pairs' order."""
    pairs = []
    for e in examples:
        for i, j in itertools.product(range(len(e["scores"])), repeat=2):
            if e["scores"][i] > e["scores"][j]:
                pairs.append({"prompt_ids": e["prompt_ids"], "chosen_ids": e["response_ids"][i],
                              "rejected_ids": e["response_ids"][j], "row_id": e["row_id"], **(
                                  {"weight": e["weight"]} if "weight" in e else {})})
    return pairs


@pytest.mark.parametrize("loss", [DPOLoss(beta=0.2), SimPOLoss(), LCPOWeighting(DPOLoss(beta=0.2))],
                         ids=["dpo", "simpo", "lcpo"])
@pytest.mark.parametrize("collator", [ListCollator, PackedListCollator], ids=["rows", "packed"])
def test_pairwise_loss_on_lists_equals_the_exploded_pairs(loss, collator):
    """Values and gradients: one forward per list, the pairs built by indexing, equal the pairs computed one by one."""
    model, tok = _model("llama")
    ref_model, _ = _model("llama", seed=1)
    reference = FrozenModelReference(ref_model)
    examples = _lists(len(tok), [(5, [9, 3, 12, 6]), (2, [4, 20, 1])])
    for i, e in enumerate(examples):
        e["weight"] = [0.5, 2.0][i]
    pair_inputs = PairCollator(tok.pad_token_id)(_exploded(examples))
    list_inputs = collator(tok.pad_token_id)(examples)

    def run(inputs):
        model.zero_grad()
        step = step_output(model, inputs, loss, reference, 16)
        step.loss.backward()
        return step, [p.grad.clone() for p in model.parameters()]

    a, ga = run(pair_inputs)
    b, gb = run(list_inputs)
    assert b.pairs.policy_chosen.shape[0] == 5 + 3  # list 0: scores [4, 3, 3, 1] -> 5 pairs; list 1: 3 pairs
    torch.testing.assert_close(b.out.per_pair, a.out.per_pair, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-6, rtol=0)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)


def test_weights_of_one_equal_the_plain_loss_and_zero_weight_gives_no_gradient():
    model, tok = _model("llama")
    examples = _lists(len(tok), [(4, [6, 3, 9]), (3, [5, 7])])
    loss = PlackettLuceDPOLoss(beta=0.3)
    reference = FrozenModelReference(_model("llama", seed=1)[0])

    def run(weights):
        for e, w in zip(examples, weights):
            if w is None:
                e.pop("weight", None)
            else:
                e["weight"] = w
        model.zero_grad()
        step = step_output(model, PackedListCollator(tok.pad_token_id)(examples), loss, reference, 16)
        step.loss.backward()
        return step.loss.detach(), [p.grad.clone() for p in model.parameters()]

    plain, gp = run([None, None])
    ones, go = run([1.0, 1.0])
    torch.testing.assert_close(ones, plain, atol=1e-7, rtol=0)
    for x, y in zip(gp, go):
        torch.testing.assert_close(y, x, atol=1e-7, rtol=0)
    # list 1 weighted 0: the gradient is that of list 0 alone (halved: the mean runs over both lists)
    _, gz = run([1.0, 0.0])
    only = [examples[0]]
    model.zero_grad()
    step = step_output(model, PackedListCollator(tok.pad_token_id)(only), loss, reference, 16)
    (step.loss / 2).backward()
    for x, y in zip(gz, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss", [PlackettLuceDPOLoss(beta=0.2), LiPOLambdaLoss(beta=0.2)], ids=["pl_dpo", "lipo"])
def test_listwise_loss_on_pair_rows_of_list_data_is_dpo(loss):
    """A pair row in list data is a list of two: the listwise loss there equals DPO on the pair batch."""
    model, tok = _model("qwen2")
    reference = FrozenModelReference(_model("qwen2", seed=1)[0])
    pairs = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12], "row_id": 0,
              "response_ids": [], "scores": []}]
    with torch.no_grad():
        listwise = loss.forward_lists(list_batch(model, PackedListCollator(tok.pad_token_id)(pairs), loss, reference))
        dpo = DPOLoss(beta=0.2)(pair_batch(model, PairCollator(tok.pad_token_id)(pairs), DPOLoss(), reference))
    torch.testing.assert_close(listwise.per_pair, dpo.per_pair, atol=1e-6, rtol=0)


def test_list_fallback_to_one_row_per_response(caplog):
    """Where a model cannot take the 4D mask, list data gets one row per response; a sliding window longer than a
    packed pair but shorter than a packed list of 4 falls back for lists only."""
    from po.run.build import choose_collator

    model, tok = _model("qwen2")
    assert isinstance(choose_collator(True, model, tok.pad_token_id, 64, lists=True, responses_per_row=4),
                      PackedListCollator)
    model.config.sliding_window, model.config.use_sliding_window = 200, True
    assert isinstance(choose_collator(True, model, tok.pad_token_id, 64, lists=True, responses_per_row=2),
                      PackedListCollator)
    with caplog.at_level("WARNING"):
        collator = choose_collator(True, model, tok.pad_token_id, 64, lists=True, responses_per_row=4)
    assert isinstance(collator, ListCollator) and "sliding_window=200" in caplog.text
    model.config.use_sliding_window = False
    model.config._attn_implementation = "flash_attention_2"
    assert isinstance(choose_collator(True, model, tok.pad_token_id, 64, lists=True), ListCollator)


def test_list_collators_worked_example():
    """The worked example of po/data/list_collate.py's docstring, exactly."""
    example = [{"prompt_ids": [1, 5], "response_ids": [[7, 2], [8, 8, 2], [9, 2]], "scores": [2, 0, 1],
                "chosen_ids": [7, 2], "rejected_ids": [8, 8, 2], "row_id": 0}]
    plain = ListCollator(0)(example)
    assert plain["input_ids"].tolist() == [[1, 5, 7, 2, 0], [1, 5, 8, 8, 2], [1, 5, 9, 2, 0]]
    assert plain["list_slots"].tolist() == [[0, 0], [0, 1], [0, 2]]
    packed = PackedListCollator(0)(example)
    assert packed["input_ids"].tolist() == [[1, 5, 7, 2, 5, 8, 8, 2, 5, 9, 2]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 1, 2, 3, 4, 1, 2, 3]]
    assert packed["list_bounds"].tolist() == [[1, 4, 8, 11]]
    for batch in (plain, packed):
        assert batch["scores"].tolist() == [[2.0, 0.0, 1.0]] and batch["present"].tolist() == [[True] * 3]
        assert list_response_masks(batch).sum(-1).tolist() == [[2, 3, 2]]
