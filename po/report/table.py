"""The sweep table: one row per configuration, the mean and std over seeds of each final metric, the best value
per loss in bold, and the runs without a summary listed with the reason."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from po.report.runs import Run

METRICS = ["eval_rewards/accuracies", "eval_rewards/margins", "eval_dpo/accuracy", "eval_logps/mean_token_chosen",
           "eval_loss", "eval_gen/length_mean", "eval_gen/kl_to_reference",
           "eval_rank/ndcg", "eval_rank/kendall_tau"]  # runs on ranked lists (po/trainer/ranking.py)
LOWER_IS_BETTER = ("loss", "kl")


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """group -> {loss, beta, seeds, metrics: name -> (mean, std)} over finished runs."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "ok":
            groups[run.group].append(run)
    table = {}
    for group, members in sorted(groups.items()):
        names = sorted(set().union(*(r.metrics() for r in members)))
        table[group] = {
            "loss": members[0].loss, "beta": members[0].beta, "seeds": len(members),
            "metrics": {n: mean_std([r.metrics()[n] for r in members if n in r.metrics()]) for n in names},
        }
    return table


def _best(table: dict[str, dict[str, Any]], metric: str) -> set[tuple[str, str]]:
    """(group, metric) cells holding the best mean of their loss."""
    best = set()
    by_loss: dict[str, list[str]] = defaultdict(list)
    for group, row in table.items():
        by_loss[row["loss"]].append(group)
    lower = any(tag in metric for tag in LOWER_IS_BETTER)
    for groups in by_loss.values():
        scored = [(table[g]["metrics"][metric][0], g) for g in groups
                  if metric in table[g]["metrics"] and not math.isnan(table[g]["metrics"][metric][0])]
        if scored:
            value = min(scored)[0] if lower else max(scored)[0]
            best |= {(g, metric) for v, g in scored if v == value}
    return best


def markdown(table: dict[str, dict[str, Any]], runs: list[Run], sweep_dir: Path, plots: list[str],
             lead: list[str] = (), notes: list[str] = ()) -> str:
    """The report; `lead`: lines that come first (the judged win rates); `notes`: why a plot was not drawn."""
    present = [m for m in METRICS + ["train_loss"] if any(m in row["metrics"] for row in table.values())]
    bold = set().union(*(_best(table, m) for m in present)) if present else set()
    lines = [f"# Sweep report: {sweep_dir.name}", "",
             f"{sum(r.status == 'ok' for r in runs)} of {len(runs)} runs finished; "
             f"{len(table)} configurations; mean ± std over seeds; best value per loss in **bold**.", ""]
    lines[2:2] = list(lead)
    lines.append("| configuration | loss | beta | seeds | " + " | ".join(present) + " |")
    lines.append("|" + "---|" * (4 + len(present)))
    for group, row in table.items():
        cells = []
        for m in present:
            if m not in row["metrics"]:
                cells.append("–")
                continue
            mean, std = row["metrics"][m]
            cell = f"{mean:.4g} ± {std:.2g}"
            cells.append(f"**{cell}**" if (group, m) in bold else cell)
        beta = "–" if row["beta"] is None else f"{row['beta']:g}"
        lines.append(f"| {group} | {row['loss']} | {beta} | {row['seeds']} | " + " | ".join(cells) + " |")
    for title, problems in (("Runs without a summary", [r for r in runs if r.status in ("failed", "unfinished")]),
                            ("Runs that could not be read", [r for r in runs if r.status == "unreadable"])):
        if problems:
            lines += ["", f"## {title}", ""]
            for r in problems:
                reason = f": {r.error.splitlines()[0]}" if r.error else ""
                lines.append(f"- `{r.path.relative_to(sweep_dir)}` ({r.status}){reason}")
    if plots or notes:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
