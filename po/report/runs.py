"""The runs of a sweep folder, read from their own files: overrides, summary, training curve, or why not.

A run is a folder with `summary.json` or `.hydra/overrides.yaml` (file names from `po.run.paths.RunPaths`). Runs
that differ only in `seed` form one configuration (`Run.group`). A run whose files cannot be read (corrupt, not
UTF-8, of the wrong shape, refused by permissions) has status `unreadable` and the reason, so a report can list it
and go on. Only relative paths inside the folder are used: a sweep copied from a cluster reads the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from po.run.paths import RunPaths


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
            target = str(as_dict(as_dict(self.summary.get("config")).get("loss")).get("_target_", "losses.?.?"))
            name = (target.split(".")[-2:-1] or ["?"])[0]
        weighting = next((o.split("=", 1)[1] for o in self.overrides if o.startswith("weighting=")), "none")
        return name if weighting == "none" else f"{name}+{weighting}"

    @property
    def beta(self) -> float | None:
        beta = as_dict(as_dict(self.summary.get("config")).get("loss")).get("beta")
        beta = beta if isinstance(beta, (int, float)) and not isinstance(beta, bool) else None
        if beta is None:
            for o in self.overrides:
                if o.startswith("loss.beta="):
                    beta = float(o.split("=", 1)[1])
        return beta

    def metrics(self) -> dict[str, float]:
        values = dict(as_dict(self.summary.get("eval")))
        train = as_dict(self.summary.get("final_train_metrics"))
        if "loss" in train:
            values["train_loss"] = train["loss"]
        return {k: v for k, v in values.items() if is_number(v)}

    def curve(self) -> list[tuple[int, float]]:
        return self.points


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def is_number(value: Any) -> bool:
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
    path = RunPaths(run).hydra / "overrides.yaml"
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
        value = json.loads(_read(RunPaths(run).summary, run))
    except json.JSONDecodeError as exc:
        raise Unreadable(f"summary.json is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") \
            from None
    if not isinstance(value, dict):
        kind = {list: "list", str: "string"}.get(type(value), type(value).__name__)
        raise Unreadable(f"summary.json holds a JSON {kind}, not an object")
    return value


def _curve(run: Path) -> list[tuple[int, float]]:
    path = RunPaths(run).metrics
    if not path.is_file():
        return []
    points = []
    for line in _read(path, run).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
        if isinstance(row, dict) and is_number(row.get("loss")) and is_number(row.get("step")):
            points.append((row["step"], row["loss"]))
    return points


def _read_run(path: Path) -> Run:
    overrides = [o for o in _overrides(path) if not o.startswith(("hydra.", "hydra/"))]
    paths = RunPaths(path)
    if paths.summary.is_file():
        return Run(path, overrides, "ok", _summary(path), points=_curve(path))
    if paths.error.is_file():
        error = paths.error.read_bytes().decode("utf-8", errors="replace").strip()
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
