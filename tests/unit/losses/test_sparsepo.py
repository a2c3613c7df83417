"""SparsePO loss, masks and token KL: hand-derived values, TDPO reduction, naive full-vocabulary equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from losses.base import PairBatch
from losses.sparsepo import SparsePOLoss
from losses.token_masks import MaskNetwork, activation_mask
from po.step.extras import ActivationRecorder, compute_with_extras
from po.step.pair_batch import pair_loss
from po.step.reference import FrozenModelReference
from po.step.token_kl import chunked_token_kl, naive_token_kl

SIZES = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
}


def tiny_pair(arch: str = "llama", seed: int = 0, vocab: int = 97):
    """A random policy, a *different* random reference (so KL and rewards are non-zero) and a batch of 2 pairs."""
    config = AutoConfig.for_model(arch, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0, **SIZES[arch])
    torch.manual_seed(seed)
    policy, ref = AutoModelForCausalLM.from_config(config).eval(), AutoModelForCausalLM.from_config(config)  # no dropout
    ids = torch.randint(3, vocab, (4, 11))
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0   # chosen 2 is shorter
    attention[3, 7:] = 0   # rejected 2 is shorter
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, 4:] = True
    response &= attention.bool()
    return policy, FrozenModelReference(ref), ref, dict(input_ids=ids, attention_mask=attention, response_mask=response)


def naive_tdpo(policy, ref, inputs, beta):
    """TDPO from full logits of both models: L = softplus(-beta*((sum r_w - sum r_l) - (sum KL_l - sum KL_w)))."""
    ids, att, resp = inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"]
    logp = torch.log_softmax(policy(input_ids=ids, attention_mask=att).logits.float(), -1)[:, :-1]
    with torch.no_grad():
        ref_logp = torch.log_softmax(ref(input_ids=ids, attention_mask=att).logits.float(), -1)[:, :-1]
    tgt = ids[:, 1:].unsqueeze(-1)
    scored = resp[:, 1:].float()
    r = ((logp.gather(-1, tgt) - ref_logp.gather(-1, tgt)).squeeze(-1) * scored).sum(-1)
    kl = ((ref_logp.exp() * (ref_logp - logp)).sum(-1) * scored).sum(-1)
    b = ids.shape[0] // 2
    return F.softplus(-beta * ((r[:b] - r[b:]) - (kl[b:] - kl[:b])))


def test_all_ones_masks_equal_tdpo_by_hand():
    """r_w = [0.5, -0.2], r_l = [0.1, (pad)], KL_w = [0.3, 0.1], KL_l = [0.2, (pad)], beta 0.1:
    u = 0.3 - 0.1 = 0.2; delta = D(y_l) - D(y_w) = 0.2 - 0.4 = -0.2; L = softplus(-0.1 * 0.4) = softplus(-0.04).
    Swapping chosen and rejected flips the sign: softplus(+0.04)."""
    pc, rc = torch.tensor([[0.5, -0.2]]), torch.zeros(1, 2)
    pr, rr = torch.tensor([[0.1, 9.0]]), torch.zeros(1, 2)   # 9.0 sits under padding and must not count
    batch = PairBatch(pc, pr, torch.tensor([[True, True]]), torch.tensor([[True, False]]), rc, rr,
                      extras={"token_kl_chosen": torch.tensor([[0.3, 0.1]]), "token_kl_rejected": torch.tensor([[0.2, 5.0]])})
    loss = SparsePOLoss(beta=0.1, mask="none")
    out = loss(batch)
    torch.testing.assert_close(out.per_pair, F.softplus(torch.tensor([-0.04])))
    torch.testing.assert_close(loss(batch.swapped()).per_pair, F.softplus(torch.tensor([0.04])))
    torch.testing.assert_close(out.metrics["kl/chosen"], torch.tensor([0.4]))
    torch.testing.assert_close(out.metrics["kl/weighted_rejected"], torch.tensor([0.2]))
    assert out.penalty is None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mask_none_equals_naive_tdpo_values_and_grads(arch):
    """The chunked extras path (chunk of 3 positions) matches TDPO from full logits, loss and policy gradients."""
    policy, reference, ref, inputs = tiny_pair(arch)
    loss = SparsePOLoss(beta=0.5, mask="none")
    ours = pair_loss(policy, inputs, loss, reference, chunk_size=3).per_pair
    grads = torch.autograd.grad(ours.sum(), list(policy.parameters()))
    naive = naive_tdpo(policy, ref, inputs, beta=0.5)
    naive_grads = torch.autograd.grad(naive.sum(), list(policy.parameters()))
    assert ours.abs().min() > 0 and (ours - F.softplus(torch.zeros(2))).abs().max() > 1e-4  # not a trivial 0.693
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=1e-5)
    for g, n in zip(grads, naive_grads):
        torch.testing.assert_close(g, n, atol=1e-5, rtol=1e-4)


def test_chunked_token_kl_equals_naive_values_and_grads():
    """KL(p_ref || p_theta) per position, chunks of 3 over 10 positions vs full [N, V] logits: values and grads."""
    torch.manual_seed(0)
    n, h, v = 10, 16, 300
    head, ref_head = torch.nn.Linear(h, v, bias=False), torch.nn.Linear(h, v, bias=False)
    hidden = torch.randn(n, h, requires_grad=True)
    ref_hidden = torch.randn(n, h)
    targets = torch.randint(0, v, (n,))
    logp, kl, ref_logp = chunked_token_kl(hidden, ref_hidden, targets, head, ref_head, chunk_size=3)
    naive = naive_token_kl(head(hidden), ref_head(ref_hidden))
    torch.testing.assert_close(kl, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logp, torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None])[:, 0])
    torch.testing.assert_close(ref_logp, torch.log_softmax(ref_head(ref_hidden), -1).gather(-1, targets[:, None])[:, 0])
    w = torch.randn(n)
    ours = torch.autograd.grad((kl * w).sum(), [hidden, head.weight])
    ref_grads = torch.autograd.grad((naive * w).sum(), [hidden, head.weight])
    for a, b in zip(ours, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert ref_head.weight.grad is None and (kl > 0).all()


def test_mask_network_has_exact_zeros_from_relu():
    """With biases 0 and larger weights about half the per-layer pre-activations are < 0: ReLU gives exact zeros."""
    torch.manual_seed(0)
    net = MaskNetwork(hidden_size=16, num_layers=1, dropout=0.0)
    with torch.no_grad():
        net.bias.zero_()
        net.weight.normal_()
    m = net(torch.randn(4, 20, 1, 16))
    assert (m == 0).float().mean() > 0.2 and (m > 0).float().mean() > 0.2 and (m >= 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_learned_mask_alive_near_one_at_step_zero(seed):
    """At initialization every response token's mask is > 0 and near 1, so SparsePO starts as TDPO."""
    policy, reference, _, inputs = tiny_pair(["llama", "qwen2"][seed % 2], seed=seed)
    torch.manual_seed(seed)
    loss = SparsePOLoss(mask="learned")
    loss.bind_model(policy)
    _, _, extras = compute_with_extras(policy, inputs, loss, reference)
    for side in ("chosen", "rejected"):
        states = extras[f"ref_hidden_states_{side}"]
        m = loss.reward_mask_net(states[:, :-1])
        valid = torch.arange(m.shape[1]) < (inputs["response_mask"][:, 1:].sum(-1).view(2, 2)[0 if side == "chosen" else 1])[:, None]
        assert (m[valid] > 0).all() and ((m[valid] - 1).abs() < 0.5).all()


def test_shared_mask_halves_each_l1_weight():
    """Masks forced to exactly 1 (weights 0, biases 1, mixer 1): |m(y_w)|_1 + |m(y_l)|_1 = 2 + 1 = 3 tokens.
    Shared: penalty = (0.2/2 + 0.1/2) * 3 = 0.45. Two networks: 0.2 * 3 + 0.1 * 3 = 0.9."""
    batch = PairBatch(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[True, True]]), torch.tensor([[True, False]]),
                      torch.zeros(1, 2), torch.zeros(1, 2),
                      extras={"token_kl_chosen": torch.zeros(1, 2), "token_kl_rejected": torch.zeros(1, 2),
                              "ref_hidden_states_chosen": torch.randn(1, 3, 2, 8),
                              "ref_hidden_states_rejected": torch.randn(1, 3, 2, 8)})
    for shared, expected in ((True, 0.45), (False, 0.9)):
        loss = SparsePOLoss(lambda_u=0.2, lambda_d=0.1, shared_mask=shared, mask_dropout=0.0)
        loss.bind_model(type("M", (), {"config": AutoConfig.for_model("llama", hidden_size=8, num_hidden_layers=2, num_attention_heads=2)})())
        for net in filter(None, (loss.reward_mask_net, loss.kl_mask_net)):
            with torch.no_grad():
                net.weight.zero_(), net.bias.fill_(1.0), net.mixer.weight.fill_(0.5)
        out = loss(batch)
        torch.testing.assert_close(out.penalty, torch.tensor([expected]))
        torch.testing.assert_close(out.preference, F.softplus(torch.zeros(1)))


def test_activation_mask_range_min_zero_padding_zero_detached():
    torch.manual_seed(0)
    acts = torch.randn(3, 6, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    m = activation_mask(acts, mask)
    assert not m.requires_grad and m.grad_fn is None
    assert ((m >= 0) & (m <= 1)).all() and (m[~mask] == 0).all()
    for row, valid in zip(m, mask):
        assert row[valid].min() == 0.0 and row[valid].max() == pytest.approx(1.0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_activation_hooks_cover_attention_mlp_and_residual(arch):
    """Every layer's attention and MLP output is hooked (2 per layer) plus the residual stream (1 per layer);
    the activation extras are zero outside the response span and the loss's mask is zero on padding."""
    policy, reference, _, inputs = tiny_pair(arch)
    recorder = ActivationRecorder(policy)
    recorder.remove()
    assert sorted(n.split(".")[-1] for n in recorder.names) == sorted(["attn", "mlp"] * 2 if arch == "gpt2"
                                                                      else ["self_attn", "mlp"] * 2)
    loss = SparsePOLoss(mask="activations")
    _, _, extras = compute_with_extras(policy, inputs, loss, reference)
    acts = extras["ref_activations_chosen"]
    assert acts.shape[-1] == 2 * 2 + 2 and not acts.requires_grad
    mask = torch.arange(acts.shape[1] - 1) < inputs["response_mask"][:2, 1:].sum(-1)[:, None]
    batch = PairBatch(torch.zeros(mask.shape), torch.zeros(mask.shape), mask, mask, extras=extras)
    m_u, m_d = loss._masks(batch, "chosen", mask)
    assert m_u is m_d and (m_u[~mask] == 0).all() and (m_u[mask].min() == 0)


def test_learned_mask_gets_gradient_and_swapped_extras():
    """The mask network is trained by the loss; LCPO's swap exchanges every *_chosen/_rejected extra."""
    policy, reference, _, inputs = tiny_pair()
    loss = SparsePOLoss(mask="learned", mask_position="token", lambda_u=1e-3)
    loss.bind_model(policy)
    out = pair_loss(policy, inputs, loss, reference)
    out.per_pair.sum().backward()
    assert loss.reward_mask_net.weight.grad.abs().sum() > 0 and out.penalty is not None
    assert {"mask/sparsity", "mask/mean", "mask/l1", "kl/weighted_chosen"} <= set(out.metrics)
