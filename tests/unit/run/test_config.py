"""Every config option composes and validates; bad values and combinations fail before any model loads."""

import subprocess
import sys
from pathlib import Path

import pytest

import losses
import po
from po.errors import ConfigError
from po.run.validate import validate
from tests.helpers.config import NEEDS, OPTIONS
from tests.helpers.runs import REPO, compose_cfg


def test_every_group_is_listed():
    groups = {g for g, _ in OPTIONS}
    assert {"model", "data", "loss", "weighting", "reference", "peft", "deepspeed", "trainer"} <= groups


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"] + NEEDS.get((group, option), []))
    try:
        validate(cfg)
    except ConfigError as exc:  # allowed only for combinations that need something this machine lacks
        assert "CUDA" in str(exc) or "reference" in str(exc) or "PEFT" in str(exc), str(exc)


def test_packages_are_this_projects():
    """A top-level `losses` or `po` from another install must not shadow ours."""
    assert Path(losses.__file__).resolve().is_relative_to(REPO)
    assert Path(po.__file__).resolve().is_relative_to(REPO)


@pytest.mark.parametrize("override,needle", [
    ("loss.beta=-1", "loss.beta must be > 0"),
    ("loss.label_smoothing=0.7", "loss.label_smoothing must be in [0.0, 0.5)"),
    ("trainer.max_stepz=3", None),  # unknown key: Hydra's own error
    ("data.max_length=1", "data.max_length=1"),
    ("reference=none", "needs reference log-probs"),
    ("reference=adapter", "needs a PEFT policy"),
])
def test_bad_config_fails_at_start_with_one_line(tmp_path, override, needle):
    proc = subprocess.run([sys.executable, "-m", "po.cli", override, f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert not (tmp_path / "run" / "model").exists()
    if needle is None:
        assert "max_stepz" in proc.stderr
    else:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("po-train: error:")]
        assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_missing_required_value_is_named():
    with pytest.raises(ConfigError, match="model.name_or_path"):
        validate(compose_cfg(["model=hf"]))
