"""What verifying a cache entry on read costs: sha256 of a tokenized-data entry and of a reference log-prob table.

Run: python recipes/cache_verify_cost.py [--gb 2] [--dir /tmp/po-verify-cost]
Builds one synthetic entry of each cache of about --gb gigabytes (tokenized: pairs of 150 + 2 x 250 int32 token ids,
UltraFeedback-like at max_length 1024; reference: fp32 log-probs of 500 response tokens per pair), then times the
verification and the load, with the page cache warm and, where this process may drop it (root), cold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from po.data import cache
from po.run.refcache import table_checksum, write_table

PAIR_TOKENS = (150, 250, 250)  # prompt, chosen, rejected
RESPONSE_TOKENS = 500  # chosen + rejected per pair in the reference table


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def tokenized_entry(folder: Path, gb: float) -> Path:
    import datasets

    pairs = int(gb * 1e9 / (4 * sum(PAIR_TOKENS)))
    rng = np.random.default_rng(0)
    parts = []
    for start in range(0, pairs, 50_000):
        n = min(50_000, pairs - start)
        columns = {name: list(rng.integers(0, 150_000, size=(n, k), dtype=np.int32))
                   for name, k in zip(("prompt_ids", "chosen_ids", "rejected_ids"), PAIR_TOKENS)}
        columns.update(status=[""] * n, field=[""] * n, where=[f"f.jsonl line {start + i}" for i in range(n)],
                       extra=["{}"] * n, truncated=[False] * n)
        parts.append(datasets.Dataset.from_dict(columns))
    entry = folder / "tokenized" / "entry"
    cache.store(entry, datasets.concatenate_datasets(parts))
    return entry


def reference_table(folder: Path, gb: float) -> Path:
    values = int(gb * 1e9 / 4) // 2
    table = {"format": 1, "key": "r" * 32, "pair_keys": torch.arange(2 * values // RESPONSE_TOKENS),
             "chosen": torch.randn(values), "chosen_offsets": torch.arange(0, values + 1, RESPONSE_TOKENS // 2),
             "rejected": torch.randn(values), "rejected_offsets": torch.arange(0, values + 1, RESPONSE_TOKENS // 2)}
    path = folder / "reference" / f"{'r' * 32}.pt"
    write_table(path, table)
    return path


def main() -> None:
    import datasets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/po-verify-cost"))
    args = parser.parse_args()
    datasets.disable_progress_bars()
    shutil.rmtree(args.dir, ignore_errors=True)
    try:
        entry = tokenized_entry(args.dir, args.gb)
        size = sum(p.stat().st_size for p in entry.rglob("*"))
        print(f"tokenized-data entry: {size / 1e9:.2f} GB in {len(list(entry.glob('*.arrow')))} arrow file(s)")
        for state in ("warm", "cold"):
            if state == "cold" and not drop_page_cache():
                print("  cold: cannot drop the page cache here (needs root)")
                break
            start = time.perf_counter()
            assert cache.problem(entry) is None
            verify = time.perf_counter() - start
            start = time.perf_counter()
            datasets.load_from_disk(str(entry), keep_in_memory=True)  # as po.data.cache.load reads a verified entry
            load = time.perf_counter() - start
            print(f"  {state}: verify {verify:.2f} s ({size / 1e6 / verify:.0f} MB/s), load into memory {load:.2f} s")

        path = reference_table(args.dir, args.gb)
        size = path.stat().st_size
        print(f"reference table: {size / 1e9:.2f} GB")
        for state in ("warm", "cold"):
            if state == "cold" and not drop_page_cache():
                break
            start = time.perf_counter()
            table = torch.load(path, map_location="cpu", weights_only=True)
            load = time.perf_counter() - start
            start = time.perf_counter()
            assert table_checksum(table) == table["sha256"]
            verify = time.perf_counter() - start
            del table
            print(f"  {state}: torch.load {load:.2f} s, checksum {verify:.2f} s ({size / 1e6 / verify:.0f} MB/s)")
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
