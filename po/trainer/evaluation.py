"""Held-out figures that do not depend on the training loss, so runs of different losses can be compared.

- `dpo/accuracy`, `dpo/margin`: the implicit DPO reward `rho(y) = S_theta(y) - S_ref(y)` of chosen vs rejected
  (needs reference log-probs; reference-free runs get them from the starting model loaded for evaluation,
  `PreferenceTrainer.eval_reference`, with `eval.reference_free_dpo=true`).
- `logps/mean_token_chosen`, `logps/mean_token_rejected`: mean response log-prob per token.
- With `eval.generate=true`: sampled responses on held-out prompts, their length (mean, p95) and a sampled-sequence
  estimate of KL(policy || reference) = mean over samples of log pi(y|x) - log ref(y|x) (summed over tokens).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from losses.base import PairBatch, masked_sum
from po.atomic import write_text_atomic
from po.step.logprobs import token_logps
from po.step.reference import ReferenceSource


def loss_independent_metrics(batch: PairBatch) -> dict[str, torch.Tensor]:
    pc, pr = (s.detach() for s in batch.policy_sums())
    metrics = {
        "logps/mean_token_chosen": pc / batch.chosen_lengths,
        "logps/mean_token_rejected": pr / batch.rejected_lengths,
    }
    if batch.ref_chosen is not None:
        rc = masked_sum(batch.ref_chosen, batch.chosen_mask)
        rr = masked_sum(batch.ref_rejected, batch.rejected_mask)
        margin = (pc - rc) - (pr - rr)
        metrics["dpo/margin"] = margin
        metrics["dpo/accuracy"] = (margin > 0).float()
    return metrics


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@torch.no_grad()
def generation_eval(policy, reference: ReferenceSource | None, tokenizer, prompts: list[list[int]], out_path: Path,
                    max_new_tokens: int = 64, temperature: float = 1.0, batch_size: int = 8,
                    seed: int = 0) -> dict[str, Any]:
    """Sample one response per prompt, write them as JSONL, and return length and KL figures.

    `reference`: a live `po.step.reference.ReferenceSource` (its `run`), or None:
    then the KL estimate is omitted.
    """
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    records = []
    pad = tokenizer.pad_token_id
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for i, p in enumerate(chunk):  # left-pad prompts for generation
                ids[i, width - len(p):] = torch.tensor(p)
                attn[i, width - len(p):] = 1
            out = policy.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=True,
                                  temperature=temperature, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                  eos_token_id=tokenizer.eos_token_id)
            for i, p in enumerate(chunk):
                response = out[i, width:].tolist()
                if tokenizer.eos_token_id in response:
                    response = response[: response.index(tokenizer.eos_token_id) + 1]
                response = [t for t in response if t != pad] or [tokenizer.eos_token_id]
                records.append({"prompt_ids": p, "response_ids": response})
        for rec in records:
            seq = torch.tensor([rec["prompt_ids"] + rec["response_ids"]], device=device)
            attn = torch.ones_like(seq)
            mask = torch.zeros_like(seq, dtype=torch.bool)
            mask[0, len(rec["prompt_ids"]):] = True
            rec["logp_policy"] = token_logps(policy, seq, attn, mask).sum().item()
            if reference is not None:
                ref = reference.run(policy, lambda m: token_logps(m, seq, attn, mask))  # noqa: B023 - used at once
                rec["logp_reference"] = ref.sum().item()
                rec["kl_estimate"] = rec["logp_policy"] - rec["logp_reference"]
    finally:
        torch.random.set_rng_state(generator_state)
        policy.train(was_training)
    write_text_atomic(out_path, "".join(
        json.dumps({"prompt": tokenizer.decode(rec["prompt_ids"]),
                    "response": tokenizer.decode(rec["response_ids"], skip_special_tokens=True),
                    "length": len(rec["response_ids"]),
                    **{k: rec[k] for k in ("logp_policy", "logp_reference", "kl_estimate") if k in rec}}) + "\n"
        for rec in records))
    lengths = [len(r["response_ids"]) for r in records]
    result = {"gen/length_mean": sum(lengths) / max(len(lengths), 1), "gen/length_p95": percentile(lengths, 0.95),
              "gen/num_prompts": len(records)}
    if reference is not None and records:
        result["gen/kl_to_reference"] = sum(r["kl_estimate"] for r in records) / len(records)
    return result


def evaluate_at_train_begin(trainer) -> dict:
    """Schedule the before-training evaluation for when the DeepSpeed training engine exists.

    Evaluating before `train()` would make the Trainer build a separate DeepSpeed inference engine for the policy
    (ZeRO-3 only; ZeRO-1/2 refuse) that `train()` then keeps instead of its training engine. Returns a dict that
    is filled with the eval metrics as training starts.
    """
    metrics: dict = {}

    class _EvaluateOnce(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not metrics:
                metrics.update(trainer.evaluate())

    trainer.add_callback(_EvaluateOnce())
    return metrics
