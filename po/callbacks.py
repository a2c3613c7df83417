"""Trainer callbacks: `metrics.jsonl`, one JSON object per logging step, written by the main process."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback


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
