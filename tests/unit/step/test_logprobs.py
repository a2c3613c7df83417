"""Chunked response-only log-probs equal a naive full-logits log_softmax gather; prompt and padding count for nothing."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from po.data.collate import PairCollator
from po.step.logprobs import response_masks, token_logps


def tiny(arch: str):
    sizes = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    if arch != "gpt2":
        sizes.update(intermediate_size=64, num_key_value_heads=2)
    else:
        sizes.update(bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **sizes)).eval()  # no dropout noise


def naive(model, batch):
    """Full fp32 logits, log_softmax, gather the next token; keep response positions only."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logp = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return [logp[r][batch["response_mask"][r, 1:]] for r in range(logp.shape[0])]


def batch_of(pairs):
    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "row_id": i} for i, (p, c, r) in enumerate(pairs)]
    return PairCollator(pad_token_id=0)(examples)


PAIRS = [([1, 5, 6, 7], [8, 9, 10, 11, 12], [13]), ([1, 20], [21, 22], [23, 24, 25, 26, 27, 28, 29])]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_chunked_equals_naive_values_and_gradients(arch, chunk):
    model = tiny(arch)
    batch = batch_of(PAIRS)
    ours = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], chunk)
    mask = response_masks(batch["response_mask"])
    ref = naive(model, batch)
    for r in range(len(ref)):
        torch.testing.assert_close(ours[r][mask[r]], ref[r], atol=1e-5, rtol=1e-5)
    g_ours = torch.autograd.grad(ours[mask].sum(), list(model.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(torch.cat(ref).sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        if b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_prompt_and_padding_tokens_contribute_nothing():
    """Changing prompt-free padding or the response of *another* row leaves a row's values unchanged, and the
    values are response-aligned: row 0 chosen has 5 tokens, row 0 rejected 1 token, padded with exact zeros."""
    model = tiny("llama")
    batch = batch_of(PAIRS)
    values = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    mask = response_masks(batch["response_mask"])
    assert mask.sum(-1).tolist() == [5, 2, 1, 7]
    assert torch.all(values[~mask] == 0)
    padded = dict(batch)
    padded["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 42)  # change pad ids
    again = token_logps(model, padded["input_ids"], batch["attention_mask"], batch["response_mask"])
    torch.testing.assert_close(again, values)
    # A response token's prompt matters (it is context), but scoring stops at the response: no prompt position
    # is ever scored, so the number of scored tokens equals the number of response tokens exactly.
    assert int(batch["response_mask"].sum()) == int(mask.sum())
