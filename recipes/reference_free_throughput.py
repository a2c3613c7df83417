"""Throughput of a reference-based loss vs reference-free SimPO on the same `po-train` job.

Run:  python recipes/reference_free_throughput.py                     (default job: tiny model, toy data, 120 steps)
      python recipes/reference_free_throughput.py --losses dpo simpo --repeats 3 -- trainer.max_steps=60

Each run is the real CLI (`python -m po.cli loss=NAME ...`) in its own run directory; the figures are read back
from `summary.json` (tokens/s over the training loop, reference forward included) and printed as a table, with
the number of models each run loaded. SimPO needs no reference model, so it loads one model instead of two and
skips the reference forward on every step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(loss: str, run_dir: Path, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "po.cli", f"loss={loss}", f"hydra.run.dir={run_dir}", "trainer.disable_tqdm=true",
           *extra]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=["dpo", "simpo"])
    parser.add_argument("--repeats", type=int, default=1, help="runs per loss, interleaved (median and range reported)")
    parser.add_argument("overrides", nargs="*", help="po-train overrides applied to every run (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, list[dict]] = {loss: [] for loss in args.losses}
        for i in range(args.repeats):  # interleaved, so that a busy machine slows every loss alike
            for loss in args.losses:
                runs[loss].append(run_once(loss, Path(tmp) / f"{loss}-{i}", args.overrides))
    print(f"{'loss':8s} {'tokens/s (median, min-max)':>28s} {'pairs/s':>8s} {'wall s':>7s} {'models':>6s} "
          f"{'reference':>9s} {'eval acc':>8s}")
    for loss, done in runs.items():
        tps = sorted(r["tokens_per_second"] for r in done)
        pps = statistics.median(r["pairs_per_second"] or 0.0 for r in done)
        wall = statistics.median(r["wall_time_s"] for r in done)
        last = done[-1]
        acc = last["eval"].get("eval_rewards/accuracies", float("nan"))
        spread = f"{statistics.median(tps):.0f} ({tps[0]:.0f}-{tps[-1]:.0f})"
        print(f"{loss:8s} {spread:>28s} {pps:8.1f} {wall:7.1f} {last['models_loaded']:6d} {last['reference']:>9s} "
              f"{acc:8.3f}")

if __name__ == "__main__":
    main()
