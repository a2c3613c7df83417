"""po.judge.stats against values computed by hand."""

import numpy as np
import pytest

from po.judge.stats import bootstrap_interval, lc_win_rate, paired_bootstrap, summarize, win_rate


def test_win_rate_counts_ties_half_and_weights_prompts_equally():
    # prompt 0: a win and a loss (0.5); prompt 1: two ties (0.5); prompt 2: two wins (1.0) -> (0.5 + 0.5 + 1) / 3
    prefs = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 1.0]])
    assert win_rate(prefs) == pytest.approx(2 / 3)


def test_lc_equals_raw_when_lengths_do_not_differ():
    prefs = np.array([[1.0], [1.0], [0.0], [0.5]])  # raw 0.625, no length difference: the fit is the intercept
    assert lc_win_rate(prefs, np.zeros((4, 1))) == pytest.approx(0.625, abs=1e-6)


def test_lc_removes_a_pure_length_preference():
    # the longer response always wins, and the policy is longer in 3 of 4 pairs: raw 0.75, at equal length 0.5
    prefs = np.array([[1.0], [1.0], [1.0], [0.0]])
    diff = np.array([[4.0], [6.0], [5.0], [-5.0]])
    assert win_rate(prefs) == 0.75
    assert lc_win_rate(prefs, diff) == pytest.approx(0.5, abs=0.1)


def test_lc_keeps_a_signal_independent_of_length():
    rng = np.random.default_rng(0)
    diff = rng.normal(10, 10, size=(200, 2))
    prefs = (rng.random((200, 2)) < 0.7).astype(float)  # wins 70% whatever the length
    assert lc_win_rate(prefs, diff) == pytest.approx(win_rate(prefs), abs=0.05)


def test_bootstrap_interval_is_degenerate_for_identical_prompts_and_covers_the_mean():
    same = np.full((10, 2), 0.75)
    assert bootstrap_interval([same], win_rate, 200) == (0.75, 0.75)
    rng = np.random.default_rng(1)
    prefs = (rng.random((50, 2)) < 0.6).astype(float)
    low, high = bootstrap_interval([prefs], win_rate, 500)
    assert low < win_rate(prefs) < high and high - low < 0.4
    assert bootstrap_interval([prefs], win_rate, 500, seed=3) == bootstrap_interval([prefs], win_rate, 500, seed=3)


def test_summarize_names_every_figure():
    prefs = np.array([[1.0, 0.5], [0.0, 1.0]])
    out = summarize(prefs, np.zeros((2, 2)), prefs, np.full((2, 2), 7.0), np.ones((2, 2)), samples=100)
    assert out["win_rate"] == pytest.approx(0.625) and out["length_mean"] == 7.0 and out["kl"] == 1.0
    for name in ("win_rate", "win_rate_lc", "score_mean", "kl"):
        assert out[f"{name}_ci_low"] <= out[name] <= out[f"{name}_ci_high"]


def test_paired_bootstrap_separates_a_constant_gain_and_not_noise():
    rng = np.random.default_rng(2)
    b = rng.random(40)
    gain = paired_bootstrap(b + 0.2, b)
    assert gain["diff"] == pytest.approx(0.2) and gain["ci_low"] == pytest.approx(0.2) and gain["separated"]
    noise = paired_bootstrap(rng.permutation(b), b)
    assert noise["ci_low"] < 0 < noise["ci_high"] and not noise["separated"]
    with pytest.raises(ValueError):
        paired_bootstrap(b, b[:5])
