"""Compose the real Hydra config (as `po-train` does) and run tiny jobs offline."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from po.config import conf_dir
from po.run.job import train

REPO = Path(__file__).resolve().parents[2]
# Fast settings for end-to-end tests: few steps, no progress bars.
FAST = ["trainer.max_steps=30", "trainer.logging_steps=5", "trainer.disable_tqdm=true"]


def compose_cfg(overrides: list[str] = ()) -> DictConfig:
    """The config `po-train OVERRIDES` would run (without Hydra's run-dir machinery)."""
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_train(run_dir: Path, overrides: list[str] = (), fast: bool = True) -> dict:
    """Train into `run_dir` with the composed config; returns the summary."""
    return train(compose_cfg((FAST if fast else []) + list(overrides)), Path(run_dir))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
