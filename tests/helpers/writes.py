"""Which process wrote which file: a trace taken inside every Python process of a job (tests/helpers/tracer/).

A run directory and the caches are shared by every rank on every node; the guarantee under test is that exactly one
process writes each file. The final file set cannot show it: an atomic write by every rank leaves one file, just as
one writer does. So the job's processes run with `trace_env(...)`: tests/helpers/tracer/sitecustomize.py records,
in each process, every open for writing, rename and mkdir under the watched folders, with the process's RANK and
host. `read_trace` gathers the records; a test then asserts one writing process per path.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

TRACER = Path(__file__).resolve().parent / "tracer"


@dataclass(frozen=True)
class Write:
    rank: str      # the process's RANK when it wrote ("-" when its launcher set none: torchrun's agent, bash, ...)
    host: str
    pid: int
    kind: str      # open | rename | mkdir | start
    path: Path

    @property
    def process(self) -> tuple[str, int]:
        return self.host, self.pid


def trace_env(trace_dir: Path, *watched: Path, pythonpath: str = "") -> dict[str, str]:
    """Variables that turn the trace on in every Python process started with them (the tracer first on the path)."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    return {"PO_TRACE_WRITES": str(trace_dir), "PO_TRACE_ROOTS": os.pathsep.join(str(w) for w in watched),
            "PYTHONPATH": os.pathsep.join(p for p in (str(TRACER), pythonpath) if p)}


def read_trace(trace_dir: Path) -> list[Write]:
    writes = []
    for file in sorted(Path(trace_dir).glob("*.tsv")):
        for line in file.read_text().splitlines():
            rank, host, pid, kind, path = line.split("\t")
            writes.append(Write(rank, host, int(pid), kind, Path(path)))
    return writes


def writers_by_path(writes: list[Write], under: Path) -> dict[Path, set[tuple[str, int]]]:
    """Path (relative to `under`) -> the processes that wrote it (start lines excluded)."""
    out: dict[Path, set[tuple[str, int]]] = defaultdict(set)
    for w in writes:
        if w.kind != "start" and w.path.is_relative_to(under):
            out[w.path.relative_to(under)].add(w.process)
    return dict(out)


def ranks_by_host(writes: list[Write]) -> dict[str, set[int]]:
    """Host -> the global ranks of the processes that started there (from their start lines)."""
    out: dict[str, set[int]] = defaultdict(set)
    for w in writes:
        if w.kind == "start" and w.rank.isdigit():
            out[w.host].add(int(w.rank))
    return dict(out)


def tree(root: Path) -> set[str]:
    """Every file and folder under `root`, relative, folders with a trailing '/'."""
    root = Path(root)
    return {str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*")}
