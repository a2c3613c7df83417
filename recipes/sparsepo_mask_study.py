"""Do SparsePO's learned masks find the token that decides the preference? A synthetic marked-token study.

Run:  PYTHONPATH=. python recipes/sparsepo_mask_study.py [--pairs 4000 --seeds 0 1 2 --l1 0 1e-4 1e-3]
      (CPU, under a minute per seed; prints a markdown table, as in docs/sparsepo.md)

Task: a prompt of 4 random filler tokens; each response is 12 independent random filler tokens with one marked
token at a random position: GOOD in the chosen response, BAD in the rejected one. Only the marked token decides the
preference; every other token is noise. A 2-layer tiny Llama (hidden 64) is trained for one pass over `--pairs`
pairs (batch 16, AdamW lr 1e-3, the mask network in its own group with weight decay 0.01), with the reference a
frozen copy of the initial model, for `mask_position=predicting` and `token` and each L1 weight (lambda_u =
lambda_d), and TDPO (`mask=none`) as the baseline. The loop is this file's own, not po-train's: one AdamW holds the
model's and the mask network's groups, and `optimizer.zero_grad()` clears both before every batch (no gradient
accumulation). On 512 held-out pairs it reports:

- ratio: mean mask on the marked token / mean mask on filler tokens (1 = the mask ignores the marked token);
- peak: % of responses whose largest mask value is on the marked token (chance ~8%);
- sparsity: % of response-token masks that are exactly 0; alive: % of responses with any mask > 0;
- acc: held-out reward accuracy with the loss's own reward (beta * U(y); for TDPO the summed log-ratio).
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from losses.sparsepo import SparsePOLoss
from po.step.extras import compute_with_extras
from po.step.pair_batch import pair_loss
from po.step.reference import FrozenModelReference
from po.trainer.loss_hooks import loss_param_groups

VOCAB, GOOD, BAD, FILLER_START = 64, 3, 4, 8
PROMPT, RESPONSE = 4, 12


def make_pairs(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`[2n, PROMPT + RESPONSE]` rows (n chosen, then n rejected) and the marked positions."""
    prompt = torch.randint(FILLER_START, VOCAB, (n, PROMPT), generator=generator)
    responses, marks = [], []
    for token in (GOOD, BAD):
        resp = torch.randint(FILLER_START, VOCAB, (n, RESPONSE), generator=generator)
        pos = torch.randint(0, RESPONSE, (n,), generator=generator)
        resp[torch.arange(n), pos] = token
        responses.append(torch.cat([prompt, resp], 1))
        marks.append(pos)
    ids = torch.cat(responses)
    response_mask = torch.zeros_like(ids, dtype=torch.bool)
    response_mask[:, PROMPT:] = True
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": response_mask,
            "marked": torch.cat(marks)}


def batches(data: dict[str, torch.Tensor], size: int):
    n = data["input_ids"].shape[0] // 2
    for start in range(0, n - size + 1, size):
        rows = torch.cat([torch.arange(start, start + size), torch.arange(n + start, n + start + size)])
        yield {k: v[rows] for k, v in data.items()}


def run(mask: str, position: str, l1: float, seed: int, pairs: int, batch_size: int = 16) -> dict[str, float]:
    """Train one configuration; evaluate masks and accuracy on held-out pairs."""
    config = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                  pad_token_id=0)
    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_config(config)
    ref_model = AutoModelForCausalLM.from_config(config)
    ref_model.load_state_dict(policy.state_dict())
    reference = FrozenModelReference(ref_model)
    loss = SparsePOLoss(beta=0.1, lambda_u=l1, lambda_d=l1, mask=mask, mask_position=position)
    loss.bind_model(policy)
    groups = [{"params": list(policy.parameters()), "weight_decay": 0.0}] + loss_param_groups(loss, 0.0)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    generator = torch.Generator().manual_seed(1000 + seed)
    train, held_out = make_pairs(pairs, generator), make_pairs(512, generator)
    policy.train()
    for batch in batches(train, batch_size):
        optimizer.zero_grad()
        pair_loss(policy, batch, loss, reference).per_pair.mean().backward()
        optimizer.step()
    policy.eval()
    with torch.no_grad():
        return evaluate(policy, reference, loss, held_out)


def evaluate(policy, reference, loss: SparsePOLoss, data: dict[str, torch.Tensor]) -> dict[str, float]:
    out = pair_loss(policy, data, loss, reference)
    result = {"acc": 100 * out.metrics["rewards/accuracies"].mean().item()}
    if loss.mask == "none":
        return result
    from losses.base import PairBatch  # masks exactly as the loss computes them, on the same held-out rows

    policy_logps, ref_logps, extras = compute_with_extras(policy, data, loss, reference)
    n = data["input_ids"].shape[0] // 2
    valid = torch.ones(n, RESPONSE, dtype=torch.bool)
    batch = PairBatch(policy_logps[:n], policy_logps[n:], valid, valid, ref_logps[:n], ref_logps[n:], extras=extras)
    masks = torch.cat([loss._masks(batch, "chosen", valid)[0], loss._masks(batch, "rejected", valid)[0]])
    marked = torch.nn.functional.one_hot(data["marked"], RESPONSE).bool()
    filler_mean = masks[~marked].mean().item()
    result.update(ratio=masks[marked].mean().item() / max(filler_mean, 1e-12),
                  peak=100 * (masks.argmax(-1) == data["marked"]).float().mean().item(),
                  sparsity=100 * (masks == 0).float().mean().item(),
                  alive=100 * (masks > 0).any(-1).float().mean().item(),
                  mean=masks.mean().item())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--l1", type=float, nargs="+", default=[0.0, 1e-4, 1e-3])
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = [("none", "-", 0.0)] + [("learned", p, l1) for p in ("predicting", "token") for l1 in args.l1]
    print("| mask | mask_position | L1 | seed | ratio | peak % | sparsity % | alive % | mean mask | held-out acc % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mask, position, l1 in configs:
        for seed in args.seeds:
            r = run(mask, "predicting" if position == "-" else position, l1, seed, args.pairs)
            fmt = lambda k, spec: format(r[k], spec) if k in r else "-"  # noqa: E731
            print(f"| {'TDPO (none)' if mask == 'none' else mask} | {position} | {l1:g} | {seed} | {fmt('ratio', '.2f')} | "
                  f"{fmt('peak', '.0f')} | {fmt('sparsity', '.1f')} | {fmt('alive', '.0f')} | {fmt('mean', '.3f')} | "
                  f"{r['acc']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
