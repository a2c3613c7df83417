"""Peak memory of one SparsePO step vs a naive full-logits implementation vs a DPO step, same model and batch.

Run:  PYTHONPATH=. python recipes/sparsepo_memory.py [--vocab 32000 --hidden 256 --pairs 4 --length 256]
      (CPU: peak resident memory of a fresh subprocess per variant; CUDA: torch.cuda.max_memory_allocated)

The model is vocab-heavy (a tiny Llama with a 32k vocabulary), so memory is dominated by logits: DPO computes
response log-probs chunk by chunk (po/step/logprobs.py); SparsePO additionally needs the full-vocabulary token KL against
the reference, computed in checkpointed chunks (po/step/token_kl.py); the naive variant materializes both models' fp32
`[B, T, V]` log-probs. Each variant runs forward + backward once after a warm-up step; the figure is the peak above
the memory held before the step (models, inputs). Goal: SparsePO <= 1.5x the DPO step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

VARIANTS = ("dpo", "sparsepo", "sparsepo_activations", "naive_sparsepo")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure(variant: str, args) -> dict:
    """Run in a fresh process: build models, one warm-up step, reset the peak, one measured step."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig, AutoModelForCausalLM

    from losses.dpo import DPOLoss
    from losses.sparsepo import SparsePOLoss
    from po.step.pair_batch import pair_loss
    from po.step.reference import FrozenModelReference
    from po.step.token_kl import naive_token_kl

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = AutoConfig.for_model("llama", vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                                  num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                                  tie_word_embeddings=False)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config).to(device)
    ref_model = AutoModelForCausalLM.from_config(config).to(device).eval().requires_grad_(False)
    rows = 2 * args.pairs
    ids = torch.randint(3, args.vocab, (rows, args.length), device=device)
    attention = torch.ones_like(ids)
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, args.length // 4:] = True
    inputs = dict(input_ids=ids, attention_mask=attention, response_mask=response)
    reference = FrozenModelReference(ref_model)

    def naive_step():
        logits = policy(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        with torch.no_grad():
            ref_logits = ref_model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        kl = naive_token_kl(logits, ref_logits)
        tgt = ids[:, 1:, None]
        r = torch.log_softmax(logits, -1).gather(-1, tgt)[..., 0] - torch.log_softmax(ref_logits, -1).gather(-1, tgt)[..., 0]
        scored = response[:, 1:].float()
        u, d = (r * scored).sum(-1), (kl * scored).sum(-1)
        return F.softplus(-0.1 * ((u[:args.pairs] - u[args.pairs:]) - (d[args.pairs:] - d[:args.pairs]))).mean()

    loss = {"dpo": DPOLoss(), "sparsepo": SparsePOLoss(), "sparsepo_activations": SparsePOLoss(mask="activations")}.get(variant)
    if loss is not None:
        loss.bind_model(policy)
        loss.to(device)

    def step():
        value = naive_step() if loss is None else pair_loss(policy, inputs, loss, reference, args.chunk_size).per_pair.mean()
        value.backward()
        policy.zero_grad(set_to_none=False)   # keep grads allocated: they count in every variant alike
        if loss is not None:
            loss.zero_grad(set_to_none=False)

    step()  # warm-up: allocates parameter grads and allocator pools
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM (the peak) to the current RSS
            f.write("5")
        step()
        peak = _rss_kib("VmHWM") * 1024 - base
    return {"variant": variant, "device": device.type, "peak_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    results = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], env=env, check=True,
                             capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    dpo = results["dpo"]["peak_mib"]
    logits_mib = 2 * args.pairs * args.length * args.vocab * 4 / 2**20
    print(f"model: llama, vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers; batch {args.pairs} pairs x "
          f"{args.length} tokens; chunk {args.chunk_size}; device {results['dpo']['device']}")
    print(f"(one fp32 [B, T, V] tensor = {logits_mib:.0f} MiB)")
    print(f"{'variant':<22}{'peak MiB':>10}{'x DPO':>8}")
    for variant, r in results.items():
        print(f"{variant:<22}{r['peak_mib']:>10.0f}{r['peak_mib'] / dpo:>8.2f}")


if __name__ == "__main__":
    main()
