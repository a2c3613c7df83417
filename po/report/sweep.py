"""`po-report SWEEP_DIR`: one table and a few plots for a sweep, from the runs' own files.

With a judge (judge=...), the report leads with the answer: win rate and length-controlled win rate against the
starting model per configuration (mean and 95% interval over seeds and prompts), the win-rate-vs-KL frontier plot,
and a line naming the best configuration and whether it is separated from the runner-up (po/report/judged.py). A
plot with nothing to draw is not drawn; the report says why.

Reads every run under SWEEP_DIR (a folder with `.hydra/overrides.yaml`, `summary.json` or `metrics.jsonl`), groups
runs that differ only in `seed`, and writes `report.md` (mean and std over seeds of each final metric, the best
value per loss in bold, failed or unfinished runs listed) and PNG plots: training loss per configuration, a final
metric against beta per loss, and response length against KL to the reference when runs generated. Works on a
partly finished sweep and on a folder copied from a cluster (only relative paths inside it are used).

A run whose files cannot be read (summary.json, metrics.jsonl or .hydra/overrides.yaml corrupt, not UTF-8, of the
wrong shape, or refused by permissions) is skipped, listed in report.md with the reason, and named on stderr; the
other runs are reported. The outputs are written atomically (po.atomic): a full disk or a read-only folder leaves
the previous report and plots as they were and is one `po-report: error:` line naming the file (`--out DIR` writes
them elsewhere).

Run: po-report multirun/2026-11-22/10-00-00 [--metric eval_rewards/accuracies] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from po.atomic import write_text_atomic
from po.report.judged import best_line, frontier_plot, judged_groups, judged_section
from po.report.plots import plot
from po.report.runs import find_runs
from po.report.table import aggregate, markdown


def write_report(sweep_dir: Path, metric: str = "eval_rewards/accuracies", out_dir: Path | None = None) -> Path:
    """Write report.md and the plots for `sweep_dir` into `out_dir` (default: the sweep folder); returns report.md.
    A failed write raises `po.atomic.WriteError` naming the file."""
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    runs = find_runs(sweep_dir)
    if not runs:
        raise SystemExit(f"po-report: error: no runs under {sweep_dir} (expected folders with .hydra/ or summary.json)")
    for run in runs:
        if run.status == "unreadable":
            print(f"po-report: skipped {run.path}: {run.error}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = aggregate(runs)
    notes: list[str] = []
    plots = plot(table, runs, out_dir, metric, notes)
    groups = judged_groups(runs)
    lead = judged_section(groups)
    if groups:
        frontier = frontier_plot(groups, out_dir)
        if frontier is not None:
            plots.insert(0, frontier)
        else:
            notes.append("no win-rate-vs-KL plot: no judged configuration has a KL to the starting model")
        lead.append(best_line(groups))
        lead.append("")
    return write_text_atomic(out_dir / "report.md", markdown(table, runs, sweep_dir, plots, lead, notes))
