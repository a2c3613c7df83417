"""The answer a judged sweep is for, first in `report.md`: win rate and length-controlled win rate against the
starting model per configuration (mean and 95% interval over seeds and prompts), the frontier plot (win rate
against KL to the starting model, per loss and beta), and a closing line naming the best configuration and whether
a paired bootstrap over prompts separates it from the runner-up.

Figures are pooled from each run's judged samples (RunPaths.judged_samples, the last judged step): the unit of the
bootstrap is a (seed, prompt) pair, so seeds and prompts both count. A run without that file (copied without it)
contributes its summary figures only: the table then shows the mean over seeds and no interval.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from po.judge.stats import bootstrap_interval, lc_win_rate, paired_bootstrap, prompt_mean, win_rate
from po.report.plots import save_png
from po.report.runs import Run
from po.run.paths import RunPaths

WIN = "eval_judge/win_rate"


@dataclass
class JudgedGroup:
    """One configuration's pooled judged figures."""

    loss: str
    beta: float | None
    seeds: int
    figures: dict[str, tuple[float, float | None, float | None]] = field(default_factory=dict)  # mean, low, high
    by_prompt: dict[str, float] = field(default_factory=dict)  # prompt text -> mean preference (seeds, samples)


def _final_samples(run: Run) -> list[dict[str, Any]]:
    """The run's judged samples of its last judged step ([] when the file is missing or unreadable)."""
    path = RunPaths(run.path).judged_samples
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("preference"), (int, float))]
    if not rows:
        return []
    last = max(r.get("step", 0) for r in rows)
    return [r for r in rows if r.get("step", 0) == last]


def _pooled(members: list[Run], samples: int) -> tuple[dict, dict[str, float]] | None:
    """Figures over (seed, prompt) units from the judged samples of every member, or None if any lacks them."""
    units: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for k, run in enumerate(members):
        rows = _final_samples(run)
        if not rows:
            return None
        for r in rows:
            units[(k, r["prompt_index"])].append(r)
    width = min(len(v) for v in units.values())
    keys = sorted(units)
    prefs = np.array([[r["preference"] for r in units[u][:width]] for u in keys], dtype=float)
    diff = np.array([[r["policy_length"] - r["start_length"] for r in units[u][:width]] for u in keys], dtype=float)
    kl = np.array([[r["kl_estimate"] for r in units[u][:width]] for u in keys], dtype=float)
    figures = {"win_rate": (win_rate(prefs), *bootstrap_interval([prefs], win_rate, samples)),
               "win_rate_lc": (lc_win_rate(prefs, diff), *bootstrap_interval([prefs, diff], lc_win_rate, samples)),
               "kl": (prompt_mean(kl), *bootstrap_interval([kl], prompt_mean, samples))}
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for u in keys:
        by_prompt[units[u][0]["prompt"]].extend(r["preference"] for r in units[u][:width])
    return figures, {p: statistics.fmean(v) for p, v in by_prompt.items()}


def judged_groups(runs: list[Run], samples: int = 1000) -> dict[str, JudgedGroup]:
    """group -> pooled figures, for the configurations whose finished runs were judged."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "ok" and WIN in run.metrics():
            groups[run.group].append(run)
    out = {}
    for name, members in sorted(groups.items()):
        group = JudgedGroup(members[0].loss, members[0].beta, len(members))
        pooled = _pooled(members, samples)
        if pooled is not None:
            group.figures, group.by_prompt = pooled
        else:  # summaries only: mean over seeds, no interval
            for key in ("win_rate", "win_rate_lc", "kl"):
                values = [r.metrics()[f"eval_judge/{key}"] for r in members if f"eval_judge/{key}" in r.metrics()]
                if values:
                    group.figures[key] = (statistics.fmean(values), None, None)
        out[name] = group
    return out


def _cell(value: tuple[float, float | None, float | None] | None) -> str:
    if value is None:
        return "–"
    mean, low, high = value
    return f"{mean:.3f}" if low is None else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def best_line(groups: dict[str, JudgedGroup], samples: int = 1000) -> str:
    """The best configuration by win rate, and whether it is separated from the runner-up (paired bootstrap)."""
    ranked = sorted((g.figures["win_rate"][0], name) for name, g in groups.items() if "win_rate" in g.figures)
    if not ranked:
        return ""
    win, best = ranked[-1]
    line = f"**Best configuration: `{best}`** (win rate {win:.3f} against the starting model)"
    if len(ranked) == 1:
        return line + "; it is the only judged configuration."
    runner_win, runner = ranked[-2]
    shared = sorted(set(groups[best].by_prompt) & set(groups[runner].by_prompt))
    if not shared:
        return line + (f"; the runner-up `{runner}` ({runner_win:.3f}) was judged on other prompts (or without "
                       "judged samples), so no paired comparison is possible.")
    result = paired_bootstrap([groups[best].by_prompt[p] for p in shared],
                              [groups[runner].by_prompt[p] for p in shared], samples)
    verdict = "separated from" if result["separated"] else "not separated from"
    return line + (f"; {verdict} the runner-up `{runner}` ({runner_win:.3f}): paired difference "
                   f"{result['diff']:+.3f} [{result['ci_low']:+.3f}, {result['ci_high']:+.3f}] over "
                   f"{result['prompts']} shared prompts (95% paired bootstrap).")


def judged_section(groups: dict[str, JudgedGroup]) -> list[str]:
    """The report's leading lines: the win-rate table (intervals over seeds and prompts)."""
    if not groups:
        return []
    lines = ["## Win rate against the starting model", "",
             "Judged responses on held-out prompts; mean [95% bootstrap interval over seeds and prompts]; ties "
             "count half; LC = length-controlled (the win rate at equal response length).", "",
             "| configuration | loss | beta | seeds | win rate | LC win rate | KL to start |",
             "|---|---|---|---|---|---|---|"]
    order = sorted(groups.items(), key=lambda kv: -kv[1].figures.get("win_rate", (-1.0,))[0])
    for name, g in order:
        beta = "–" if g.beta is None else f"{g.beta:g}"
        lines.append(f"| {name} | {g.loss} | {beta} | {g.seeds} | {_cell(g.figures.get('win_rate'))} | "
                     f"{_cell(g.figures.get('win_rate_lc'))} | {_cell(g.figures.get('kl'))} |")
    return lines + [""]


def frontier_plot(groups: dict[str, JudgedGroup], out_dir: Path) -> str | None:
    """Win rate against KL to the starting model, one series per loss, points labelled by beta; None when no
    configuration has both figures."""
    points = [(g.loss, g.beta, g.figures["kl"][0], g.figures["win_rate"]) for g in groups.values()
              if "kl" in g.figures and "win_rate" in g.figures]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for loss in sorted({p[0] for p in points}):
        mine = sorted((p for p in points if p[0] == loss), key=lambda p: p[2])
        xs, ys = [p[2] for p in mine], [p[3][0] for p in mine]
        err = None
        if all(p[3][1] is not None for p in mine):
            err = [[p[3][0] - p[3][1] for p in mine], [p[3][2] - p[3][0] for p in mine]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=loss)
        for p in mine:
            if p[1] is not None:
                ax.annotate(f"β={p[1]:g}", (p[2], p[3][0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("KL to the starting model (nats per response)")
    ax.set_ylabel("win rate vs starting model")
    ax.legend(fontsize=7)
    return save_png(fig, out_dir, "win_rate_vs_kl.png")
