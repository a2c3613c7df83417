"""The sweep's PNG plots: training loss per configuration, a final metric against beta per loss, and response length
against KL to the reference when runs generated. Each is written atomically (a failed write leaves the old one)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from po.atomic import write_atomic
from po.report.runs import Run


def save_png(fig, out_dir: Path, name: str) -> str:
    """Write `fig` as the PNG `out_dir/name` atomically (a failed write leaves the previous plot)."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        write_atomic(out_dir / name, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)
    return name


def _no_curve_reason(finished: list[Run]) -> str:
    """Why no finished run has a training-loss point (for the report)."""
    config = [(r.summary.get("steps"), ((r.summary.get("config") or {}).get("trainer") or {}).get("logging_steps"))
              for r in finished]
    known = [(s, n) for s, n in config if isinstance(s, int) and isinstance(n, (int, float))]
    if known and all(s < n for s, n in known):
        return (f"no training-curve plot: every run trained fewer steps (at most {max(s for s, _ in known)}) than "
                f"one logging interval (trainer.logging_steps={max(n for _, n in known):g}), so none logged a "
                "training loss; lower trainer.logging_steps to draw one")
    return "no training-curve plot: no run's metrics.jsonl holds a training loss"


def plot(table: dict[str, dict[str, Any]], runs: list[Run], out_dir: Path, metric: str,
         notes: list[str] | None = None) -> list[str]:
    """Write the plots that have something to draw; for each that has not, a sentence saying why goes to `notes`."""
    notes = [] if notes is None else notes
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    finished = [r for r in runs if r.status == "ok"]
    by_loss: dict[str, list[Run]] = defaultdict(list)
    for r in finished:
        if r.curve():  # a panel only for losses with a logged training loss: no empty axes
            by_loss[r.loss].append(r)
    if finished and not any(r.curve() for r in finished):
        notes.append(_no_curve_reason(finished))
    elif by_loss:
        fig, axes = plt.subplots(1, len(by_loss), figsize=(5 * len(by_loss), 3.5), squeeze=False)
        for ax, (loss, members) in zip(axes[0], sorted(by_loss.items())):
            for r in members:
                curve = r.curve()
                if curve:
                    ax.plot(*zip(*curve), marker=".", label=f"{r.group} {next((o for o in r.overrides if o.startswith('seed=')), '')}")
            ax.set_title(f"training loss: {loss}")
            ax.set_xlabel("step")
            ax.legend(fontsize=6)
        written.append(save_png(fig, out_dir, "training_curves.png"))

    points = defaultdict(list)
    for row in table.values():
        if row["beta"] is not None and metric in row["metrics"]:
            points[row["loss"]].append((row["beta"], *row["metrics"][metric]))
    if points:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for loss, pts in sorted(points.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", label=loss)
        ax.set_xscale("log")
        ax.set_xlabel("beta")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        written.append(save_png(fig, out_dir, "metric_vs_beta.png"))
    elif finished:
        notes.append(f"no {metric}-vs-beta plot: no configuration has both a beta and {metric}")

    gen = [(r.loss, r.metrics()["eval_gen/kl_to_reference"], r.metrics()["eval_gen/length_mean"])
           for r in finished if "eval_gen/kl_to_reference" in r.metrics()]
    if gen:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for loss in sorted({g[0] for g in gen}):
            ax.scatter([g[1] for g in gen if g[0] == loss], [g[2] for g in gen if g[0] == loss], label=loss)
        ax.set_xlabel("KL to reference (sampled estimate)")
        ax.set_ylabel("mean response length")
        ax.legend(fontsize=7)
        written.append(save_png(fig, out_dir, "length_vs_kl.png"))
    return written
