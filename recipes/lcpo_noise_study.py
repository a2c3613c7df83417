"""LCPO noise-robustness study: flip a known fraction of labels and see what LCPO learns about them.

Run (from the repository root, ~10 minutes on one CPU core for the full grid):
    PYTHONPATH=. python recipes/lcpo_noise_study.py --out runs/lcpo_noise
    PYTHONPATH=. python recipes/lcpo_noise_study.py --out runs/q --flips 0.3 --regimes stream --steps 150
    PYTHONPATH=. python recipes/lcpo_noise_study.py --out runs/all --merge runs/a/results.json runs/b/results.json
Writes OUT/results.json, OUT/table.md and OUT/lcpo_noise.png (`--merge` only redraws them from earlier results, e.g.
of regimes run as separate processes).

Data: token-level pairs with a ground-truth rule a tiny model learns: a good response (8 tokens) contains two
"marked" tokens from a fixed set of 16, a bad one contains none; prompts are 8 random filler tokens. A known
fraction of training labels is flipped (exactly round(f*n) pairs); the held-out split (512 pairs) is clean.
Two regimes: `stream` (fresh pairs, each seen once: steps x batch pairs) and `repeated` (a small set of 128 pairs
seen for many epochs, where the model memorizes the flipped pairs).
For each base loss and flip rate it trains with and without `weighting=lcpo` through po's own trainer
(`PreferenceTrainer`, the config composed as `po-train` would) and reports: clean held-out reward accuracy,
`1 - eta` averaged over the last quarter of the steps, and mean `w` on flipped vs clean pairs as seen in
training during the second half of the run. Model: conf/model/tiny (2-layer, 64-hidden Llama); batch 32,
AdamW lr 1e-3 constant; DPO beta 2.0. Base losses: `dpo`, `cdpo` (DPO with label_smoothing 0.1), plus `ipo` and
`simpo` when conf/loss has them (their own default hyperparameters).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

PROMPT_LEN = RESPONSE_LEN = 8
MARKED = list(range(7, 23))      # 16 marked token ids (ids 0-6 are the tokenizer's special tokens)
FILLER = list(range(23, 512))    # every other token of the 512-token shipped tokenizer
BOS = 1
REPEATED_SET = 128
EVAL_PAIRS = 512

BASE_LOSSES: dict[str, list[str]] = {
    "dpo": ["loss=dpo", "loss.beta=2.0"],
    "cdpo": ["loss=dpo", "loss.beta=2.0", "loss.label_smoothing=0.1"],
    "ipo": ["loss=ipo"],
    "simpo": ["loss=simpo"],
}


def make_pairs(n: int, flip_rate: float, seed: int) -> list[dict[str, Any]]:
    """`n` token-level pairs; exactly round(flip_rate * n) of them (chosen at random) have their labels flipped."""
    rng = random.Random(seed)
    flipped = set(rng.sample(range(n), round(flip_rate * n)))
    records = []
    for i in range(n):
        good = [rng.choice(FILLER) for _ in range(RESPONSE_LEN)]
        for pos in rng.sample(range(RESPONSE_LEN), 2):
            good[pos] = rng.choice(MARKED)
        bad = [rng.choice(FILLER) for _ in range(RESPONSE_LEN)]
        chosen, rejected = (bad, good) if i in flipped else (good, bad)
        records.append({"prompt_ids": [BOS] + [rng.choice(FILLER) for _ in range(PROMPT_LEN - 1)],
                        "chosen_ids": chosen, "rejected_ids": rejected, "row_id": i, "flipped": i in flipped})
    return records


class _EtaTrace(TrainerCallback):
    """Records eta after every optimizer step (added after the trainer's own callbacks, so after the update)."""

    def __init__(self, loss):
        self.loss, self.values = loss, []

    def on_step_end(self, args, state, control, **kwargs):
        self.values.append(self.loss.eta.mean().item())


def run_one(base: str, lcpo: bool, flip_rate: float, regime: str, steps: int = 200, seed: int = 0,
            batch: int = 32, extra_overrides: list[str] = (), workdir: Path | None = None) -> dict[str, Any]:
    """Train one configuration; return clean accuracy, the eta trace and w on flipped / clean training pairs."""
    import datasets
    from hydra import compose, initialize_config_dir

    from po.config import conf_dir
    from po.data.load import PreferenceData
    from po.data.quality import DataReport
    from po.models.tokenizer import load_tokenizer
    from po.run.build import build_trainer
    from po.run.validate import validate

    overrides = BASE_LOSSES[base] + (["weighting=lcpo"] if lcpo else []) + [
        f"seed={seed}", f"trainer.max_steps={steps}", f"trainer.per_device_train_batch_size={batch}",
        "trainer.learning_rate=1e-3", "trainer.lr_scheduler_type=constant", "trainer.logging_steps=1000000",
        "trainer.disable_tqdm=true", "trainer.report_to=none", "trainer.save_strategy=no", "trainer.packing=false",
        "eval.before_training=false",
        "model.warmup.steps=0"] + list(extra_overrides)  # the random-init start docs/lcpo.md's figures were measured from
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    loss = validate(cfg)
    n_train = steps * batch if regime == "stream" else REPEATED_SET
    train_records = make_pairs(n_train, flip_rate, seed)
    flipped = torch.tensor([r["flipped"] for r in train_records])
    eval_records = make_pairs(EVAL_PAIRS, 0.0, seed + 10_000)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "flipped"} for r in rs]  # noqa: E731
    data = PreferenceData(datasets.Dataset.from_list(strip(train_records)),
                          datasets.Dataset.from_list(strip(eval_records)),
                          reports={"train": DataReport(), "eval": DataReport()})
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        trainer, _, _ = build_trainer(cfg, Path(tmp), data=data, loss=loss, tokenizer=load_tokenizer(cfg.model))
        seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, row ids, w) of training forwards
        trace = None
        if lcpo:
            trace = _EtaTrace(loss)
            trainer.add_callback(trace)
            loss.register_forward_hook(lambda mod, inp, out: seen.append(
                (trainer.state.global_step, inp[0].extras["row_ids"].cpu(), out.metrics["lcpo/w_mean"].cpu()))
                if torch.is_grad_enabled() else None)
        trainer.train()
        accuracy = trainer.evaluate()["eval_rewards/accuracies"]
    result = {"base": base, "lcpo": lcpo, "flip_rate": flip_rate, "regime": regime, "steps": steps,
              "clean_accuracy": accuracy}
    if lcpo:
        late = [(rows, w) for step, rows, w in seen if step >= steps // 2]
        rows = torch.cat([r for r, _ in late])
        w = torch.cat([w for _, w in late]).double()
        is_flipped = flipped[rows]
        tail = trace.values[-max(1, steps // 4):]
        result.update(
            eta_trace=trace.values,
            one_minus_eta=1 - sum(tail) / len(tail),
            w_flipped=w[is_flipped].mean().item() if is_flipped.any() else float("nan"),
            w_clean=w[~is_flipped].mean().item(),
            frac_flipped_w_below_half=(w[is_flipped] < 0.5).double().mean().item() if is_flipped.any() else 1.0,
            frac_clean_w_above_half=(w[~is_flipped] > 0.5).double().mean().item(),
        )
    return result


def available_bases() -> list[str]:
    from po.config import conf_dir

    present = {p.stem for p in (conf_dir() / "loss").glob("*.yaml")}
    return [b for b in BASE_LOSSES if BASE_LOSSES[b][0].split("=")[1] in present]


def table(results: list[dict]) -> str:
    """Markdown: one row per (regime, base, flip rate); plain vs LCPO accuracy, 1-eta, w on flipped / clean."""
    lines = ["| regime | base loss | flip rate | clean acc. (plain) | clean acc. (LCPO) | 1 - eta (LCPO) "
             "| mean w flipped | mean w clean |", "|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["regime"], r["base"], r["flip_rate"])  # noqa: E731
    plain = {key(r): r for r in results if not r["lcpo"]}
    for r in sorted((r for r in results if r["lcpo"]), key=lambda r: (r["regime"] != "stream",) + key(r)[1:]):
        p = plain.get(key(r), {}).get("clean_accuracy", float("nan"))
        lines.append(f"| {r['regime']} | {r['base']} | {r['flip_rate']:.1f} | {p:.3f} | {r['clean_accuracy']:.3f} "
                     f"| {r['one_minus_eta']:.3f} | {r['w_flipped']:.4f} | {r['w_clean']:.4f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {"stream": "-", "repeated": "--"}
    for regime in sorted({r["regime"] for r in results}):
        for base in sorted({r["base"] for r in results}):
            for lcpo in (False, True):
                rs = sorted((r for r in results if r["regime"] == regime and r["base"] == base and r["lcpo"] == lcpo),
                            key=lambda r: r["flip_rate"])
                if not rs:
                    continue
                x = [r["flip_rate"] for r in rs]
                label = f"{base}{'+lcpo' if lcpo else ''} ({regime})"
                axes[0].plot(x, [r["clean_accuracy"] for r in rs], styles[regime], marker="o", label=label)
                if lcpo:
                    axes[1].plot(x, [r["one_minus_eta"] for r in rs], styles[regime], marker="o", label=label)
                    axes[2].plot(x, [r["w_flipped"] for r in rs], styles[regime], marker="v", label=f"{label} flipped")
                    axes[2].plot(x, [r["w_clean"] for r in rs], styles[regime], marker="^", label=f"{label} clean")
    flips = sorted({r["flip_rate"] for r in results})
    axes[1].plot(flips, flips, ":", color="gray", label="true flip rate")
    for ax, title in zip(axes, ("clean held-out reward accuracy", "final 1 - eta", "mean w on training pairs")):
        ax.set_xlabel("true flip rate")
        ax.set_title(title)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lcpo_noise"))
    parser.add_argument("--flips", default="0.1,0.2,0.3,0.4")
    parser.add_argument("--regimes", default="stream,repeated")
    parser.add_argument("--bases", default=None, help="comma list from: " + ", ".join(BASE_LOSSES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", nargs="*", type=Path, default=None, help="results.json files to combine")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bases = args.bases.split(",") if args.bases else available_bases()
    results = [r for path in args.merge or [] for r in json.loads(path.read_text())]
    for regime in args.regimes.split(",") if args.merge is None else []:
        for base in bases:
            for flip in (float(f) for f in args.flips.split(",")):
                for lcpo in (False, True):
                    r = run_one(base, lcpo, flip, regime, args.steps, args.seed)
                    results.append(r)
                    print(json.dumps({k: v for k, v in r.items() if k != "eta_trace"}), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "table.md").write_text(table(results) + "\n")
    plot(results, args.out / "lcpo_noise.png")
    print(table(results))
    print(f"wrote {args.out}/results.json, table.md, lcpo_noise.png")


if __name__ == "__main__":
    main()
