"""Side-by-side benchmark: po (through its trainer, as po-train runs it) vs TRL's DPOTrainer, same model/data/batch.

Run:
    python recipes/bench_vs_trl.py                    # defaults: W1 and W2, 8 pairs/step, fp32 CPU (<10 min, 2 cores)
    python recipes/bench_vs_trl.py --smoke            # tiny model, 2 short steps: checks that everything runs
    python recipes/bench_vs_trl.py --workloads W2 --steps 5
    python recipes/bench_vs_trl.py --device cuda --dtype bfloat16 --arch qwen2 --vocab 151936 --hidden 896 \
        --intermediate 4864 --layers 24 --heads 14 --kv-heads 2 --peak-tflops 989   # 0.5B-shaped, on a GPU

What it does: builds a random Llama-shaped model offline (vocab 32000, hidden 256, 4 layers by default) and a
word-level tokenizer whose tokens are `t0 ... tN`, writes two synthetic workloads of random tokens
(W1: prompts 64-192, responses 64-256, max_length 512; W2: prompts 512-768, responses 32-128, max_length 1024),
then trains the same steps on the same pairs in the same order with
  - po:         `po.run.build.build_trainer` + `trainer.train()` (po-train's code path), reference=model;
  - po cached:  the same with reference=cached on a warm cache (filled beforehand, not timed);
  - TRL:        `trl.DPOTrainer` with a separate reference model, no precompute (its defaults otherwise, except
                gradient checkpointing off, as in po).
Each run is its own subprocess, so peak memory is that process's peak RSS (`resource.getrusage`). Throughput counts
steps after the first (warm-up); tokens are prompt+response tokens of both responses (the same work for both
tools). The losses of the first two steps (same batches; step 2 after one identical update) of po and TRL are
printed and should agree to 1e-4.
Timing noise on a shared machine is large: compare the ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (REPO, add_model_arguments, build_model, build_tokenizer,  # noqa: E402
                          parse_model_arguments, passthrough, run_measurement, step_timer)

WORKLOADS = {  # (prompt min, max), (response min, max), max_length
    "W1": ((64, 192), (64, 256), 512),
    "W2": ((512, 768), (32, 128), 1024),
}
LR = 1e-4  # large enough that the loss after one update differs visibly from ln 2
SMOKE = {"W1": ((4, 12), (3, 10), 32), "W2": ((16, 24), (2, 6), 40)}


# --- setup: tokenizer, model, data ------------------------------------------------------------------------------

def build_data(workload: tuple, vocab: int, pairs: int, out: Path, seed: int = 0) -> list[int]:
    """Random-token pairs as text ("t12 t7 ..."); returns the tokens per pair (prompt twice, both responses)."""
    (p_lo, p_hi), (r_lo, r_hi), _ = workload
    rng = random.Random(seed)
    words = lambda n: " ".join(f"t{rng.randrange(vocab - 3)}" for _ in range(n))  # noqa: E731
    tokens = []
    with open(out, "w") as fh:
        for _ in range(pairs):
            p, c, r = rng.randint(p_lo, p_hi), rng.randint(r_lo, r_hi), rng.randint(r_lo, r_hi)
            # responses start with a space: TRL tokenizes prompt + response as one string
            fh.write(json.dumps({"prompt": words(p), "chosen": " " + words(c), "rejected": " " + words(r)}) + "\n")
            tokens.append(2 * p + c + r + 2)  # + EOS after each response
    return tokens


# --- workers (each in its own process) ----------------------------------------------------------------------------

def _losses(history: list[dict]) -> list[float]:
    return [h["loss"] for h in sorted((h for h in history if "loss" in h), key=lambda h: h["step"])]


def po_overrides(args, wd: Path, cached: bool) -> list[str]:
    _, _, max_length = (SMOKE if args.smoke else WORKLOADS)[args.workload]
    over = [
        "model=hf", f"model.name_or_path={wd / 'model'}", f"model.dtype={args.dtype}", "model.attn_implementation=sdpa",
        "data=jsonl", f"data.path={wd / (args.workload + '.jsonl')}", f"data.max_length={max_length}",
        "data.max_prompt_length=null", "data.eval_fraction=0", "eval.before_training=false",
        f"trainer.max_steps={args.steps}", f"trainer.per_device_train_batch_size={args.batch}",
        "trainer.logging_steps=1", f"trainer.learning_rate={LR}", "+trainer.train_sampling_strategy=sequential",
        "trainer.disable_tqdm=true", "trainer.save_strategy=no", f"trainer.use_cpu={args.device == 'cpu'}",
        f"trainer.bf16={args.dtype == 'bfloat16'}", "trainer.dataloader_drop_last=false",
    ]
    over += ["reference=cached", f"reference.dir={wd / 'cache'}"] if cached else ["reference=model"]
    return over


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    wd = Path(args.workdir)
    times: list[float] = []
    if args.worker in ("po", "po_cached"):
        sys.path.insert(0, str(REPO))
        from hydra import compose, initialize_config_dir

        from po.config import conf_dir

        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("train", overrides=po_overrides(args, wd, args.worker != "po"))
        from po.run.build import build_trainer

        trainer, _, facts = build_trainer(cfg, wd / f"run_{args.worker}_{args.workload}")
        if args.worker == "po_cached" and not facts["reference_cache"]["hit"]:
            raise SystemExit("po_cached: the cache was not warm")
    else:
        import datasets
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        _, _, max_length = (SMOKE if args.smoke else WORKLOADS)[args.workload]
        dtype = getattr(torch, args.dtype)
        tok = AutoTokenizer.from_pretrained(wd / "tokenizer")
        model = AutoModelForCausalLM.from_pretrained(wd / "model", dtype=dtype, attn_implementation="sdpa")
        ref = AutoModelForCausalLM.from_pretrained(wd / "model", dtype=dtype, attn_implementation="sdpa")
        rows = [json.loads(line) for line in open(wd / f"{args.workload}.jsonl")]
        config = DPOConfig(
            output_dir=str(wd / f"trl_{args.workload}"), per_device_train_batch_size=args.batch,
            max_steps=args.steps, logging_steps=1, learning_rate=LR, bf16=args.dtype == "bfloat16",
            use_cpu=args.device == "cpu", gradient_checkpointing=False, max_length=max_length,
            train_sampling_strategy="sequential", precompute_ref_log_probs=False, report_to="none",
            save_strategy="no", disable_tqdm=True, dataloader_drop_last=False, seed=0,
        )
        trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tok)
    trainer.add_callback(step_timer(times, []))
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    out = {"step_times": times, "losses": _losses(trainer.state.log_history), "peak_rss_gib": peak,
           "gpu_peak_gib": gpu_peak}
    if args.worker == "po":  # warm the cache for the po_cached run (after the peak was read; not timed)
        from po.cli.cache_ref import fill_reference_cache

        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            out["cache"] = fill_reference_cache(compose("train", overrides=po_overrides(args, wd, True)))
    return out


def run_worker(args, name: str, workload: str, wd: Path) -> dict:
    return run_measurement(__file__, ["--worker", name, "--workload", workload, "--workdir", str(wd)],
                           wd / f"result_{name}_{workload}.json", args.passthrough, f"{name} on {workload}")


# --- the table ----------------------------------------------------------------------------------------------------

def throughput(res: dict, tokens: list[int], batch: int) -> tuple[float, float]:
    times = res["step_times"]
    skip = 1 if len(times) > 1 else 0  # the first step warms up allocators and kernels
    measured = times[skip:]
    pairs = batch * len(measured)
    toks = sum(tokens[batch * skip: batch * (skip + len(measured))])
    wall = max(sum(measured), 1e-9)
    return pairs / wall, toks / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (first one is warm-up); default 3")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak, for model FLOPs utilization")
    parser.add_argument("--workdir", default=None, help="keep model, data and cache here (default: a temp folder)")
    parser.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    args = parse_model_arguments(parser)
    if args.smoke:
        args.batch = min(args.batch, 2)
    args.steps = args.steps or (2 if args.smoke else 3)
    args.passthrough = passthrough(args, ("steps", "batch"))
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory(prefix="po-bench-") as tmp:
        wd = Path(args.workdir or tmp)
        wd.mkdir(parents=True, exist_ok=True)
        build_tokenizer(args.vocab, wd / "tokenizer")
        n_params = build_model(args, wd / "model")
        build_tokenizer(args.vocab, wd / "model")  # model=hf reads the tokenizer beside the weights
        print(f"model: {args.arch}, {n_params / 1e6:.1f}M parameters (vocab {args.vocab}, hidden {args.hidden}, "
              f"{args.layers} layers), {args.dtype} on {args.device}, {args.threads} threads; "
              f"{args.batch} pairs/step, {args.steps} steps (first = warm-up)", flush=True)
        rows = []
        for w in args.workloads.split(","):
            spec = (SMOKE if args.smoke else WORKLOADS)[w]
            tokens = build_data(spec, args.vocab, args.batch * args.steps, wd / f"{w}.jsonl")
            res = {}
            for name in ("po", "trl", "po_cached"):
                t0 = time.perf_counter()
                res[name] = run_worker(args, name, w, wd)
                print(f"  {w} {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
            rows.append((w, tokens, res))
        print(format_table(rows, args, n_params))


def format_table(rows, args, n_params: int) -> str:
    lines = ["", "| workload | tool | pairs/s | tokens/s | peak RSS GiB | loss step 1, step 2 | vs TRL: speed | vs TRL: memory |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for w, tokens, res in rows:
        trl_pps, _ = throughput(res["trl"], tokens, args.batch)
        for name, label in (("trl", "TRL DPOTrainer"), ("po", "po"), ("po_cached", "po reference=cached")):
            pps, tps = throughput(res[name], tokens, args.batch)
            mem = res[name]["peak_rss_gib"]
            ratio_s = pps / trl_pps
            ratio_m = mem / res["trl"]["peak_rss_gib"]
            loss = ", ".join(f"{x:.6f}" for x in res[name]["losses"][:2])
            lines.append(f"| {w} | {label} | {pps:.2f} | {tps:.0f} | {mem:.2f} | {loss} | {ratio_s:.2f}x | "
                         f"{ratio_m:.2f}x |")
            if args.peak_tflops:
                # model FLOPs per token: policy forward+backward (6N) + reference forward (2N, not for cached)
                flops = (6 + (0 if name == "po_cached" else 2)) * n_params * tps
                notes.append(f"{w} {label}: MFU {100 * flops / (args.peak_tflops * 1e12):.1f}% "
                             f"(GPU peak {res[name]['gpu_peak_gib'] or 0:.1f} GiB)")
        po_pps, _ = throughput(res["po"], tokens, args.batch)
        cached_pps, _ = throughput(res["po_cached"], tokens, args.batch)
        # step 1: same batch, same weights (policy = reference, so ln 2 unless the maths differ); step 2: the next
        # batch after one identical AdamW update, which also checks that the gradients agree
        diffs = [abs(a - b) for a, b in zip(res["po"]["losses"][:2], res["trl"]["losses"][:2])]
        worst = max(diffs)
        notes.append(f"{w}: loss |po - TRL| at steps 1-2 = {', '.join(f'{d:.1e}' for d in diffs)} "
                     f"({'agree' if worst <= 1e-4 else 'DIFFER'} to 1e-4); "
                     f"cached / uncached po throughput = {cached_pps / po_pps:.2f}x")
    return "\n".join(lines + [""] + notes)


if __name__ == "__main__":
    main()
