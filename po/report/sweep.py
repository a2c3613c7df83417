"""`po-report SWEEP_DIR`: one table and a few plots for a sweep, from the runs' own files.

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

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from po.atomic import write_atomic, write_text_atomic
from po.errors import POError

METRICS = ["eval_rewards/accuracies", "eval_rewards/margins", "eval_dpo/accuracy", "eval_logps/mean_token_chosen",
           "eval_loss", "eval_gen/length_mean", "eval_gen/kl_to_reference"]
LOWER_IS_BETTER = ("loss", "kl")


class Unreadable(Exception):
    """A run file that cannot be read or parsed; the message says which and why."""


@dataclass
class Run:
    path: Path
    overrides: list[str]
    status: str  # ok | failed | unfinished | unreadable
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    points: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss) from metrics.jsonl

    @property
    def group(self) -> str:
        """The configuration without its seed: runs of one group are repeats."""
        kept = [o for o in self.overrides if not o.startswith("seed=")]
        return ",".join(kept) or "(defaults)"

    @property
    def loss(self) -> str:
        for o in self.overrides:
            if o.startswith("loss="):
                name = o.split("=", 1)[1]
                break
        else:
            target = str(_dict(_dict(self.summary.get("config")).get("loss")).get("_target_", "losses.?.?"))
            name = (target.split(".")[-2:-1] or ["?"])[0]
        weighting = next((o.split("=", 1)[1] for o in self.overrides if o.startswith("weighting=")), "none")
        return name if weighting == "none" else f"{name}+{weighting}"

    @property
    def beta(self) -> float | None:
        beta = _dict(_dict(self.summary.get("config")).get("loss")).get("beta")
        beta = beta if isinstance(beta, (int, float)) and not isinstance(beta, bool) else None
        if beta is None:
            for o in self.overrides:
                if o.startswith("loss.beta="):
                    beta = float(o.split("=", 1)[1])
        return beta

    def metrics(self) -> dict[str, float]:
        values = dict(_dict(self.summary.get("eval")))
        train = _dict(self.summary.get("final_train_metrics"))
        if "loss" in train:
            values["train_loss"] = train["loss"]
        return {k: v for k, v in values.items() if _is_number(v)}

    def curve(self) -> list[tuple[int, float]]:
        return self.points


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read(path: Path, run: Path) -> str:
    """The UTF-8 text of a run file, or `Unreadable` naming it (relative to the run) and the reason."""
    name = path.relative_to(run)
    try:
        with path.open("rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise Unreadable(f"{name} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"{name} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return [o for o in run.name.split(",") if "=" in o]
    try:
        value = yaml.safe_load(_read(path, run))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise Unreadable(f".hydra/overrides.yaml is not valid YAML{at}") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise Unreadable(f".hydra/overrides.yaml holds a {type(value).__name__}, not a list of overrides")
    return [str(o) for o in value]


def _summary(run: Path) -> dict[str, Any]:
    try:
        value = json.loads(_read(run / "summary.json", run))
    except json.JSONDecodeError as exc:
        raise Unreadable(f"summary.json is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") \
            from None
    if not isinstance(value, dict):
        kind = {list: "list", str: "string"}.get(type(value), type(value).__name__)
        raise Unreadable(f"summary.json holds a JSON {kind}, not an object")
    return value


def _curve(run: Path) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    points = []
    for line in _read(path, run).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
        if isinstance(row, dict) and _is_number(row.get("loss")) and _is_number(row.get("step")):
            points.append((row["step"], row["loss"]))
    return points


def _read_run(path: Path) -> Run:
    overrides = [o for o in _overrides(path) if not o.startswith(("hydra.", "hydra/"))]
    if (path / "summary.json").is_file():
        return Run(path, overrides, "ok", _summary(path), points=_curve(path))
    if (path / "error.txt").is_file():
        error = (path / "error.txt").read_bytes().decode("utf-8", errors="replace").strip()
        return Run(path, overrides, "failed", error=error)
    return Run(path, overrides, "unfinished")


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run under `sweep_dir`; a run whose files cannot be read has status `unreadable` and the reason."""
    runs = []
    candidates = {p.parent for p in sweep_dir.rglob("summary.json")}
    candidates |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    for path in sorted(candidates):
        try:
            runs.append(_read_run(path))
        except Unreadable as exc:
            runs.append(Run(path, [o for o in path.name.split(",") if "=" in o], "unreadable", error=str(exc)))
    return runs


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


def markdown(table: dict[str, dict[str, Any]], runs: list[Run], sweep_dir: Path, plots: list[str]) -> str:
    present = [m for m in METRICS + ["train_loss"] if any(m in row["metrics"] for row in table.values())]
    bold = set().union(*(_best(table, m) for m in present)) if present else set()
    lines = [f"# Sweep report: {sweep_dir.name}", "",
             f"{sum(r.status == 'ok' for r in runs)} of {len(runs)} runs finished; "
             f"{len(table)} configurations; mean ± std over seeds; best value per loss in **bold**.", ""]
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
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


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
    plots = plot(table, runs, out_dir, metric)
    return write_text_atomic(out_dir / "report.md", markdown(table, runs, sweep_dir, plots))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="po-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="eval_rewards/accuracies", help="metric plotted against beta")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and the plots (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"po-report: error: {args.sweep_dir} is not a folder")
    try:
        path = write_report(args.sweep_dir, args.metric, args.out)
    except POError as exc:
        raise SystemExit(f"po-report: error: {exc}") from None
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
