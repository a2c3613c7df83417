"""Hydra sweeps through submitit without Slurm (hydra/launcher=local) and the loss-ablation recipe.

The same sweeps on a real Slurm are in tests/cluster/test_slurm.py.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.runs import REPO
from tests.helpers.slurm import job_env, sweep_point

ABLATION = REPO / "recipes" / "ablation.yaml"
TINY = ["trainer.max_steps=4", "trainer.logging_steps=2", "trainer.disable_tqdm=true", "eval.before_training=false"]


def _sweep_params() -> dict[str, list[str]]:
    params = yaml.safe_load(ABLATION.read_text())["hydra"]["sweeper"]["params"]
    return {key: [v.strip() for v in str(values).split(",")] for key, values in params.items()}


def test_ablation_covers_every_loss_with_its_own_beta_grid():
    """The ablation sweeps the five losses x 3 beta levels x 2 weightings x 3 seeds = 90 runs; every swept loss
    has a low < mid < high beta of its own."""
    params = _sweep_params()
    assert params["loss"] == ["dpo", "ipo", "simpo", "ln_dpo", "sparsepo"]
    assert params["weighting"] == ["none", "lcpo"]
    assert len(list(itertools.product(*params.values()))) == 90
    betas = yaml.safe_load(ABLATION.read_text())["betas"]
    for loss in params["loss"]:
        assert set(betas[loss]) == set(params["beta_level"]), loss
        assert betas[loss]["low"] < betas[loss]["mid"] < betas[loss]["high"], loss


def test_ablation_sweeps_only_existing_options():
    """Every loss and weighting the ablation sweeps is a config in conf/ (a typo would only show up as failed runs
    on the cluster)."""
    params = _sweep_params()
    missing = [f"conf/{group}/{option}.yaml" for group in ("loss", "weighting") for option in params[group]
               if not (REPO / "conf" / group / f"{option}.yaml").is_file()]
    assert not missing, f"recipes/ablation.yaml sweeps options that do not exist: {missing}"


@pytest.mark.slow
def test_ablation_recipe_runs_as_a_submitit_local_sweep(tmp_path: Path):
    """`po-train -m --config-dir recipes --config-name ablation hydra/launcher=local` with a 2-point slice
    (loss=dpo, beta_level=low,high): two submitit jobs, each trains with the beta of its level from DPO's grid
    and is named from its overrides."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "po.cli", "-m", "--config-dir", str(REPO / "recipes"), "--config-name", "ablation",
           "hydra/launcher=local", f"hydra.sweep.dir={sweep}", "loss=dpo", "weighting=none", "seed=1",
           "beta_level=low,high", *TINY]
    out = subprocess.run(cmd, cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    grid = yaml.safe_load(ABLATION.read_text())["betas"]["dpo"]
    for level in ("low", "high"):
        run = sweep_point(sweep, f"beta_level={level}")
        assert json.loads((run / "summary.json").read_text())["steps"] == 4
        resolved = yaml.safe_load((run / "resolved_config.yaml").read_text())
        assert resolved["loss"]["beta"] == grid[level] and resolved["seed"] == 1
        assert (run / "model" / "config.json").is_file()
    assert len([p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]) == 2  # two submitit jobs
