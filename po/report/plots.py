"""The sweep's PNG plots: training loss per configuration, a final metric against beta per loss, and response length
against KL to the reference when runs generated. Each is written atomically (a failed write leaves the old one)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from po.atomic import write_atomic
from po.report.runs import Run


def _save(fig, out_dir: Path, name: str) -> str:
    """Write `fig` as the PNG `out_dir/name` atomically (a failed write leaves the previous plot)."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        write_atomic(out_dir / name, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)
    return name


def plot(table: dict[str, dict[str, Any]], runs: list[Run], out_dir: Path, metric: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    finished = [r for r in runs if r.status == "ok"]
    by_loss: dict[str, list[Run]] = defaultdict(list)
    for r in finished:
        by_loss[r.loss].append(r)
    if finished:
        fig, axes = plt.subplots(1, len(by_loss), figsize=(5 * len(by_loss), 3.5), squeeze=False)
        for ax, (loss, members) in zip(axes[0], sorted(by_loss.items())):
            for r in members:
                curve = r.curve()
                if curve:
                    ax.plot(*zip(*curve), marker=".", label=f"{r.group} {next((o for o in r.overrides if o.startswith('seed=')), '')}")
            ax.set_title(f"training loss: {loss}")
            ax.set_xlabel("step")
            ax.legend(fontsize=6)
        written.append(_save(fig, out_dir, "training_curves.png"))

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
        written.append(_save(fig, out_dir, "metric_vs_beta.png"))

    gen = [(r.loss, r.metrics()["eval_gen/kl_to_reference"], r.metrics()["eval_gen/length_mean"])
           for r in finished if "eval_gen/kl_to_reference" in r.metrics()]
    if gen:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for loss in sorted({g[0] for g in gen}):
            ax.scatter([g[1] for g in gen if g[0] == loss], [g[2] for g in gen if g[0] == loss], label=loss)
        ax.set_xlabel("KL to reference (sampled estimate)")
        ax.set_ylabel("mean response length")
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir, "length_vs_kl.png"))
    return written
