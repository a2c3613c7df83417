"""Data preparation figures: tokenization rows/s (1 and N processes) and the cost of a cache hit.

Run: python recipes/data_prep_bench.py [--rows 5000] [--num-proc 2]
Writes a synthetic UltraFeedback-style JSONL (message lists, scores) to a temp folder and loads it through
`po.data.load.load_preference_data` with the shipped tokenizer, as `po-train data=jsonl` would.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from po.config import conf_dir
from po.data.load import load_preference_data
from po.data.toy import generate
from po.models.tokenizer import load_tiny_tokenizer


def write_rows(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i, pair in enumerate(generate(n, seed=1)):
            user = pair["prompt"][0]
            f.write(json.dumps({"prompt": user["content"], "chosen": [user] + pair["chosen"],
                                "rejected": [user] + pair["rejected"], "score_chosen": 8.0,
                                "score_rejected": float(i % 8)}) + "\n")


def timed_load(path: Path, cache: Path, *overrides: str) -> tuple[float, str]:
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["data=jsonl", f"data.path={path}", f"data.cache_dir={cache}", *overrides])
    start = time.perf_counter()
    data = load_preference_data(cfg.data, load_tiny_tokenizer(), cfg.seed)
    return time.perf_counter() - start, data.reports["train"].cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "uf.jsonl"
        write_rows(path, args.rows)
        one, state1 = timed_load(path, Path(tmp) / "c1", "data.num_proc=1")
        many, state2 = timed_load(path, Path(tmp) / "c2", f"data.num_proc={args.num_proc}")
        hit, state3 = timed_load(path, Path(tmp) / "c1", "data.num_proc=1")
        for label, seconds, state in (("1 process", one, state1), (f"{args.num_proc} processes", many, state2),
                                      ("again, same settings", hit, state3)):
            print(f"{args.rows} rows, {label:>22}: {seconds:6.2f} s ({args.rows / seconds:7.0f} rows/s), cache {state}")


if __name__ == "__main__":
    main()
