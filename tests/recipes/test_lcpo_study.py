"""The LCPO noise study in small (recipes/lcpo_noise_study.py): fresh pairs, 30% of labels flipped, DPO beta 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "lcpo_noise_study.py"


def load_study():
    spec = importlib.util.spec_from_file_location("lcpo_noise_study", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_lcpo_recovers_the_flip_rate_on_a_stream_of_fresh_pairs(tmp_path):
    """150 steps x 32 fresh pairs, exactly 30% flipped. LCPO should learn 1 - eta ~ 0.30 (last quarter of the
    steps), give w < 0.5 to >= 90% of flipped pairs and w > 0.5 to >= 90% of clean ones (second half of the run),
    and reach at least plain DPO's reward accuracy on clean held-out pairs."""
    study = load_study()
    pairs = study.make_pairs(1000, 0.3, seed=0)
    assert sum(r["flipped"] for r in pairs) == 300
    lcpo = study.run_one("dpo", True, 0.3, "stream", steps=150, workdir=tmp_path)
    plain = study.run_one("dpo", False, 0.3, "stream", steps=150, workdir=tmp_path)
    assert abs(lcpo["one_minus_eta"] - 0.30) <= 0.05, lcpo["one_minus_eta"]
    assert lcpo["frac_flipped_w_below_half"] >= 0.9
    assert lcpo["frac_clean_w_above_half"] >= 0.9
    assert lcpo["clean_accuracy"] >= plain["clean_accuracy"]
