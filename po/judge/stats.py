"""Win rates with intervals: the figures a judged sweep reports, and how sure they are.

Why: a win rate from 64 prompts moves by several points between seeds; a report must say whether a difference is
real. Every figure here comes with a bootstrap 95% interval over prompts (prompts are the unit that is sampled;
the responses of one prompt are not independent), and two configurations are compared by a paired bootstrap over
the prompts they share.

Inputs are per-sample arrays of shape [prompts, samples per prompt]:
- `prefs`: the judge's preference for the policy's response over the starting model's (1 win, 0.5 tie, 0 loss, or
  a probability from a pairwise judge), so ties count half;
- `length_diff`: policy response length minus the starting model's, in tokens.

The length-controlled win rate follows AlpacaEval 2 LC: fit a logistic model of the preference on the (normalized,
tanh-squashed) length difference, `P(win) = sigmoid(a + b * tanh(d / sd(d)))`, and report `sigmoid(a)`, the win
rate the model predicts when both responses have the same length. Pairs where the policy is longer, shorter, or
equally long weigh the same in the fit (`_sign_balance`). A small L2 penalty on the slope alone keeps the
fit finite when length alone decides every pair (the separating boundary is then d = 0, so the intercept goes to 0
and the LC win rate to 0.5), without shrinking the intercept.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

LEVEL = 0.95
RIDGE = 1e-3  # L2 penalty on the slope b in the LC fit (per sample); the intercept is not shrunk


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _sign_balance(d: np.ndarray) -> np.ndarray:
    """Sample weights that give longer, shorter and equal-length pairs the same total weight (summing to 1), so the
    fit's intercept is not pulled by how often the policy is longer: without them, a judge that prefers length alone
    (the classes separate at d = 0) would get an intercept set by the ratio of longer to shorter pairs."""
    groups = [d > 0, d < 0, d == 0]
    present = [g for g in groups if g.any()]
    weights = np.zeros_like(d)
    for g in present:
        weights[g] = 1.0 / (len(present) * g.sum())
    return weights


def prompt_mean(values: np.ndarray) -> float:
    """The mean over prompts of each prompt's mean over its samples (rows: prompts)."""
    return float(np.asarray(values, dtype=float).mean(axis=1).mean())


def win_rate(prefs: np.ndarray) -> float:
    """Mean preference per prompt, then over prompts (ties count half)."""
    return prompt_mean(prefs)


def lc_win_rate(prefs: np.ndarray, length_diff: np.ndarray, iterations: int = 25) -> float:
    """The win rate at zero length difference from a logistic fit on the squashed length difference."""
    y = np.asarray(prefs, dtype=float).reshape(-1)
    d = np.asarray(length_diff, dtype=float).reshape(-1)
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    features = np.stack([np.ones_like(x), x], axis=1)
    weights = _sign_balance(d)
    theta = np.zeros(2)
    penalty = np.diag([0.0, RIDGE])
    for _ in range(iterations):  # Newton steps on the penalized weighted log-loss (convex: converges quickly)
        p = _sigmoid(features @ theta)
        grad = features.T @ (weights * (p - y)) + penalty @ theta
        hess = (features * (weights * p * (1 - p))[:, None]).T @ features + penalty
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(_sigmoid(theta[0]))


def bootstrap_interval(values_by_prompt: list[np.ndarray], statistic: Callable[..., float], samples: int = 1000,
                       seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of `statistic(*arrays)` over prompts drawn with replacement (rows of each array)."""
    rng = np.random.default_rng(seed)
    n = values_by_prompt[0].shape[0]
    draws = [statistic(*(v[idx] for v in values_by_prompt)) for idx in rng.integers(0, n, size=(samples, n))]
    return _percentile_interval(draws, level)


def _percentile_interval(draws, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def summarize(prefs, length_diff, scores, lengths, kl, samples: int = 1000, seed: int = 0) -> dict[str, float]:
    """The judged figures with their intervals: win_rate, win_rate_lc, score_mean (each with _ci_low/_ci_high),
    length_mean and kl (mean with interval)."""
    arrays = {k: np.asarray(v, dtype=float) for k, v in (("prefs", prefs), ("length_diff", length_diff),
                                                         ("scores", scores), ("lengths", lengths), ("kl", kl))}
    prefs, diff = arrays["prefs"], arrays["length_diff"]
    out: dict[str, float] = {}

    def add(name: str, value: float, interval: tuple[float, float] | None = None) -> None:
        out[name] = value
        if interval is not None:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval

    add("win_rate", win_rate(prefs), bootstrap_interval([prefs], win_rate, samples, seed))
    add("win_rate_lc", lc_win_rate(prefs, diff), bootstrap_interval([prefs, diff], lc_win_rate, samples, seed))
    add("score_mean", prompt_mean(arrays["scores"]), bootstrap_interval([arrays["scores"]], prompt_mean, samples, seed))
    add("length_mean", prompt_mean(arrays["lengths"]))
    add("kl", prompt_mean(arrays["kl"]), bootstrap_interval([arrays["kl"]], prompt_mean, samples, seed))
    out["num_prompts"] = float(prefs.shape[0])
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int = 1000, seed: int = 0,
                     level: float = LEVEL) -> dict[str, float | bool]:
    """Compare two configurations on the same prompts (per-prompt win rates `a[i]`, `b[i]`): the mean difference
    a - b, its percentile interval over prompts resampled together, and whether that interval excludes 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired_bootstrap needs two equal-length 1-D arrays of per-prompt values")
    diff = a - b
    rng = np.random.default_rng(seed)
    draws = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    low, high = _percentile_interval(draws, level)
    return {"diff": float(diff.mean()), "ci_low": low, "ci_high": high, "separated": bool(low > 0 or high < 0),
            "prompts": len(diff)}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
