"""Benchmark: one forward per ranked list (listwise loss) vs the same lists exploded into pairs (loss=dpo).

Run:
    python recipes/bench_lists.py                 # K=4, prompts 100-400 tokens, responses 50-300, 2 lists/step, CPU
    python recipes/bench_lists.py --smoke         # tiny model, short sequences: checks that everything runs
    python recipes/bench_lists.py --device cuda --dtype bfloat16 --lists 8 --steps 6

What it does: builds a random Llama-shaped model offline (vocab 32000, hidden 256, 4 layers by default, the shape of
recipes/bench_vs_trl.py, where the forward dominates) and a word-level tokenizer, writes UltraFeedback-shaped data
(K=4 responses per prompt with distinct scores), and trains the same prompts in the same order with po's trainer
(`po.run.build.build_trainer`, po-train's code path, reference=model, packing on), twice:
  - listwise: the ranked rows, `loss=pl_dpo`: one packed row `[prompt | y1 | y2 | y3 | y4]` per list;
  - exploded: each list written as its C(4,2) = 6 pairs, `loss=dpo`, 6x the pairs per step so both runs see the same
    prompts per step (each pair is po's packed pair row: the prompt once per pair, each response three times).
Each run is its own subprocess: peak memory is its peak RSS (and the GPU's peak allocation on CUDA). Throughput is
prompts (lists) per second over the steps after the first (warm-up), by the wall clock and by this process's CPU
time (the steadier figure on a shared machine).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (REPO, add_model_arguments, build_model, build_tokenizer, parse_model_arguments,  # noqa: E402
                          passthrough, run_measurement, step_timer)

SHAPE = ((100, 400), (50, 300), 704)   # prompt tokens, response tokens, max_length (prompt + one response)
SMOKE = ((8, 16), (4, 12), 32)
K = 4


def build_data(shape: tuple, vocab: int, lists: int, wd: Path, seed: int = 0) -> None:
    """`ranked.jsonl` (K responses, scores K-1..0 in a random order) and `pairs.jsonl` (its C(K, 2) pairs per list,
    list by list, so a step of 6B pairs holds the same B prompts as a step of B lists)."""
    (p_lo, p_hi), (r_lo, r_hi), _ = shape
    rng = random.Random(seed)
    words = lambda n: " ".join(f"t{rng.randrange(vocab - 3)}" for _ in range(n))  # noqa: E731
    with open(wd / "ranked.jsonl", "w") as ranked, open(wd / "pairs.jsonl", "w") as pairs:
        for _ in range(lists):
            prompt = words(rng.randint(p_lo, p_hi))
            responses = [" " + words(rng.randint(r_lo, r_hi)) for _ in range(K)]
            scores = rng.sample(range(K), K)
            ranked.write(json.dumps({"prompt": prompt, "responses": responses, "scores": scores}) + "\n")
            for i, j in itertools.combinations(range(K), 2):
                better, worse = (i, j) if scores[i] > scores[j] else (j, i)
                pairs.write(json.dumps({"prompt": prompt, "chosen": responses[better],
                                        "rejected": responses[worse]}) + "\n")


def overrides(args, wd: Path, mode: str) -> list[str]:
    _, _, max_length = SMOKE if args.smoke else SHAPE
    per_step = args.lists if mode == "listwise" else args.lists * K * (K - 1) // 2
    return [
        "model=hf", f"model.name_or_path={wd / 'model'}", f"model.dtype={args.dtype}", "model.attn_implementation=sdpa",
        "data=jsonl", f"data.path={wd / ('ranked.jsonl' if mode == 'listwise' else 'pairs.jsonl')}",
        f"data.max_length={max_length}", "data.max_prompt_length=null", "data.eval_fraction=0",
        "eval.before_training=false", f"loss={'pl_dpo' if mode == 'listwise' else 'dpo'}", "reference=model",
        f"trainer.max_steps={args.steps}", f"trainer.per_device_train_batch_size={per_step}",
        "trainer.logging_steps=1", "+trainer.train_sampling_strategy=sequential", "trainer.disable_tqdm=true",
        "trainer.save_strategy=no", f"trainer.use_cpu={args.device == 'cpu'}",
        f"trainer.bf16={args.dtype == 'bfloat16'}",
        "trainer.dataloader_drop_last=false", f"data.cache_dir={wd / 'tokenized'}",
    ]


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from hydra import compose, initialize_config_dir

    from po.config import conf_dir
    from po.run.build import build_trainer

    wd = Path(args.workdir)
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides(args, wd, args.worker))
    trainer, _, facts = build_trainer(cfg, wd / f"run_{args.worker}")
    times: list[float] = []
    cpu: list[float] = []
    trainer.add_callback(step_timer(times, cpu))
    trainer.train()
    return {"step_times": times, "cpu_times": cpu, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "collator": type(trainer.data_collator).__name__,
            "tokens_per_second": [h["tokens_per_second"] for h in trainer.state.log_history
                                  if "tokens_per_second" in h][1:]}


def run_worker(args, mode: str, wd: Path) -> dict:
    return run_measurement(__file__, ["--worker", mode, "--workdir", str(wd)], wd / f"result_{mode}.json",
                           args.passthrough, mode)


def prompts_per_second(res: dict, lists_per_step: int, key: str = "step_times") -> float:
    times = res[key]
    measured = times[1:] if len(times) > 1 else times  # the first step warms up allocators and kernels
    return lists_per_step * len(measured) / max(sum(measured), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (the first is warm-up); default 4")
    parser.add_argument("--lists", type=int, default=2, help="prompts (lists) per step")
    parser.add_argument("--workdir", default=None, help="keep model and data here (default: a temp folder)")
    args = parse_model_arguments(parser)
    args.steps = args.steps or (2 if args.smoke else 4)
    args.passthrough = passthrough(args, ("steps", "lists"))
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory(prefix="po-bench-lists-") as tmp:
        wd = Path(args.workdir or tmp)
        wd.mkdir(parents=True, exist_ok=True)
        build_tokenizer(args.vocab, wd / "tokenizer")
        n_params = build_model(args, wd / "model")
        build_tokenizer(args.vocab, wd / "model")
        build_data(SMOKE if args.smoke else SHAPE, args.vocab, args.lists * args.steps, wd)
        print(f"model: {args.arch}, {n_params / 1e6:.1f}M parameters, {args.dtype} on {args.device}, {args.threads} "
              f"threads; K={K}, {args.lists} prompts/step, {args.steps} steps (first = warm-up)", flush=True)
        res = {}
        for mode in ("listwise", "exploded"):
            t0 = time.perf_counter()
            res[mode] = run_worker(args, mode, wd)
            print(f"  {mode}: done in {time.perf_counter() - t0:.0f} s ({res[mode]['collator']})", flush=True)
    print(format_table(res, args))


def format_table(res: dict, args) -> str:
    base = prompts_per_second(res["exploded"], args.lists)
    base_cpu = prompts_per_second(res["exploded"], args.lists, "cpu_times")
    lines = ["", "| run | loss | rows per step | prompts/s | tokens/s | peak RSS GiB | GPU peak GiB | speed-up | "
             "prompts per CPU-s | speed-up (CPU time) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, loss, rows in (("exploded", "dpo", args.lists * 6), ("listwise", "pl_dpo", args.lists)):
        r = res[mode]
        pps = prompts_per_second(r, args.lists)
        tokens = sum(r["tokens_per_second"]) / max(len(r["tokens_per_second"]), 1)  # real tokens (no padding)
        gpu = f"{r['gpu_peak_gib']:.2f}" if r["gpu_peak_gib"] is not None else "-"
        per_cpu = prompts_per_second(r, args.lists, "cpu_times")
        lines.append(f"| {mode} | {loss} | {rows} | {pps:.3f} | {tokens:.0f} | {r['peak_rss_gib']:.2f} | {gpu} | "
                     f"{pps / base:.2f}x | {per_cpu:.3f} | {per_cpu / base_cpu:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
