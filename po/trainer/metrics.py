"""Metrics: averaged over the pairs of the global batch (sums and counts across micro-batches and ranks), and written
to `metrics.jsonl`, one JSON object per logging step, by the main process."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback


class MetricAccumulator:
    """Collects per-pair metric tensors between two logging points; `reduce` all-reduces sums and counts.

    Sums stay tensors on the values' device until `reduce`, so adding metrics on the hot path never waits for
    the accelerator (no `.item()` per micro-batch); the one transfer happens at a logging step.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)

    def add(self, metrics: dict[str, torch.Tensor | float]) -> None:
        for name, value in metrics.items():
            value = value.detach().double() if torch.is_tensor(value) else torch.tensor(float(value), dtype=torch.float64)
            self.sums[name] = self.sums[name] + value.sum()
            self.counts[name] += value.numel()

    def add_total(self, name: str, amount: torch.Tensor | float) -> None:
        """A quantity that is summed, not averaged (e.g. tokens processed)."""
        self.sums[name] = self.sums[name] + (amount.detach().double() if torch.is_tensor(amount) else amount)
        self.counts[name] = 1.0

    def reduce(self, totals: set[str] = frozenset()) -> dict[str, float]:
        """Global averages (or sums for `totals`), identical on every rank; then clears the accumulator.

        Every rank must call this at the same point (it all-reduces when distributed). Names are sorted, and each
        rank contributes zeros for names it has not seen, so ranks agree on the layout.
        """
        names = sorted(self.sums)
        if dist.is_available() and dist.is_initialized():
            gathered: list[list[str]] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, names)
            names = sorted(set().union(*gathered))
        values = torch.tensor([[_as_float(self.sums.get(n, 0.0)), self.counts.get(n, 0.0)] for n in names],
                              dtype=torch.float64)
        if dist.is_available() and dist.is_initialized() and names:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            values = values.to(device)
            dist.all_reduce(values)
            values = values.cpu()
        self.sums.clear()
        self.counts.clear()
        out = {}
        for name, (total, count) in zip(names, values.tolist()):
            if count > 0:
                out[name] = total if name in totals else total / count
        return out


def _as_float(value: torch.Tensor | float) -> float:
    return float(value.item()) if torch.is_tensor(value) else float(value)


class MetricsJsonl(TrainerCallback):
    """Appends `{"step": N, <metric>: value, ...}` for every `Trainer.log` call (training and evaluation)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step}
        for key, value in logs.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)  # keep the file valid JSON; a NaN is visible, never silently dropped
            record[key] = value
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
