"""Ranked-list study: when the full ranking says more than its best-vs-worst pair, does a listwise loss learn it?

Run (from the repository root, a few minutes on one CPU core):
    PYTHONPATH=. python recipes/lists_study.py --out runs/lists_study
    PYTHONPATH=. python recipes/lists_study.py --out runs/q --steps 100 --seeds 0
Writes OUT/results.json and OUT/table.md (the table in docs/lists.md).

Data: token-level lists of K=4 responses (8 tokens each) to a prompt of 8 filler tokens. Two kinds of marked tokens,
A and B (8 ids each). The four responses of a list carry: A and B (score 3), A only (2), B only (1), neither (0),
in a random order. The best-vs-worst pair differs in both A and B at once, so it cannot tell which matters more;
only the middle of the ranking (A only > B only) says that A does.
Arms, at equal prompts (the same prompts in the same order, `--steps` x `--batch`):
  - `dpo_binarized`: DPO on each list's best-vs-worst pair (what users keep of UltraFeedback);
  - `dpo_all_pairs`: DPO on the six pairs each list yields (po's pairwise loss on lists, one forward per list);
  - `pl_dpo`, `lipo`: the listwise losses on the whole lists.
Held-out (512 clean lists, never trained on): pairwise ranking accuracy over all six pairs of each list (implicit
reward `beta * rho` of the better response above the worse one), the same on the middle pair alone (A only vs B
only), Kendall tau and NDCG (po's `eval_rank/*`). Model: conf/model/tiny (2-layer, 64-hidden Llama); AdamW lr 1e-3
constant; beta 0.5 for every loss.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

RESPONSE_LEN = PROMPT_LEN = 8
MARK_A = list(range(7, 15))
MARK_B = list(range(15, 23))
FILLER = list(range(23, 512))
BOS = 1
EVAL_LISTS = 512
ARMS: dict[str, tuple[list[str], str]] = {  # overrides, data: lists or binarized pairs
    "dpo_binarized": (["loss=dpo", "loss.beta=0.5"], "binarized"),
    "dpo_all_pairs": (["loss=dpo", "loss.beta=0.5"], "lists"),
    "pl_dpo": (["loss=pl_dpo", "loss.beta=0.5"], "lists"),
    "lipo": (["loss=lipo", "loss.beta=0.5"], "lists"),
}


def make_lists(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` lists (see the module docstring): response_ids, scores, and the row's best/worst as chosen/rejected."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        responses = []
        for marks in ([MARK_A, MARK_B], [MARK_A], [MARK_B], []):
            tokens = [rng.choice(FILLER) for _ in range(RESPONSE_LEN)]
            for pos, mark in zip(rng.sample(range(RESPONSE_LEN), len(marks)), marks):
                tokens[pos] = rng.choice(mark)
            responses.append(tokens)
        scores = [3.0, 2.0, 1.0, 0.0]
        order = rng.sample(range(4), 4)
        rows.append({"prompt_ids": [BOS] + [rng.choice(FILLER) for _ in range(PROMPT_LEN - 1)],
                     "response_ids": [responses[j] for j in order], "scores": [scores[j] for j in order],
                     "chosen_ids": responses[0], "rejected_ids": responses[3], "row_id": i})
    return rows


def middle_pair_accuracy(trainer, eval_rows: list[dict[str, Any]]) -> float:
    """Held-out accuracy on the middle pair alone (A only, score 2, above B only, score 1)."""
    from po.data.list_collate import ListCollator
    from po.step.list_batch import list_batch

    model = trainer.model
    model.eval()
    correct = []
    with torch.no_grad():
        for start in range(0, len(eval_rows), 64):
            batch = ListCollator(0)(eval_rows[start:start + 64])
            batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
            lists = list_batch(model, batch, trainer.loss_module, trainer.reference)
            rho = lists.log_ratios()
            a = (lists.scores == 2).float().argmax(-1)
            b = (lists.scores == 1).float().argmax(-1)
            rows = torch.arange(rho.shape[0])
            correct += (rho[rows, a] > rho[rows, b]).tolist()
    return sum(correct) / len(correct)


def run_one(arm: str, steps: int = 150, batch: int = 16, seed: int = 0,
            workdir: Path | None = None) -> dict[str, Any]:
    """Train one arm through po's trainer; return its held-out ranking figures."""
    import datasets
    from hydra import compose, initialize_config_dir

    from po.config import conf_dir
    from po.data.load import PreferenceData
    from po.data.quality import DataReport
    from po.models.tokenizer import load_tokenizer
    from po.run.build import build_trainer
    from po.run.validate import validate

    loss_overrides, kind = ARMS[arm]
    overrides = loss_overrides + [
        f"seed={seed}", f"trainer.max_steps={steps}", f"trainer.per_device_train_batch_size={batch}",
        "trainer.per_device_eval_batch_size=64", "trainer.learning_rate=1e-3", "trainer.lr_scheduler_type=constant",
        "trainer.logging_steps=1000000", "trainer.disable_tqdm=true", "trainer.report_to=none",
        "trainer.save_strategy=no", "eval.before_training=false",
        "model.warmup.steps=0"]  # the random-init start docs/lists.md's figures were measured from
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    loss = validate(cfg)
    train_rows = make_lists(steps * batch, seed)
    if kind == "binarized":  # the same prompts, each as its best-vs-worst pair (a list of two in list batches)
        train_rows = [{**r, "response_ids": [], "scores": []} for r in train_rows]
    eval_rows = make_lists(EVAL_LISTS, seed + 10_000)
    data = PreferenceData(datasets.Dataset.from_list(train_rows), datasets.Dataset.from_list(eval_rows),
                          reports={"train": DataReport(), "eval": DataReport()}, lists=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        trainer, _, _ = build_trainer(cfg, Path(tmp), data=data, loss=loss, tokenizer=load_tokenizer(cfg.model))
        trainer.train()
        metrics = trainer.evaluate()
        middle = middle_pair_accuracy(trainer, eval_rows)
    return {"arm": arm, "seed": seed, "steps": steps, "batch": batch,
            "ranking_accuracy": metrics["eval_dpo/accuracy"], "middle_pair_accuracy": middle,
            "kendall_tau": metrics["eval_rank/kendall_tau"], "ndcg": metrics["eval_rank/ndcg"]}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| arm | seeds | ranking accuracy (6 pairs) | middle pair (A only > B only) | Kendall tau | NDCG |",
             "|---|---|---|---|---|---|"]
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm]
        if not rows:
            continue

        def cell(key: str) -> str:
            values = [r[key] for r in rows]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.fmean(values):.3f}{spread}"

        lines.append(f"| {arm} | {len(rows)} | {cell('ranking_accuracy')} | {cell('middle_pair_accuracy')} | "
                     f"{cell('kendall_tau')} | {cell('ndcg')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=",".join(ARMS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            results.append(run_one(arm, args.steps, args.batch, seed, out))
            print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
