"""Multi-node training on a real two-node Slurm cluster (tests/helpers/multinode.py): two hosts, 2 ranks each.

- `sbatch --nodes=2 slurm/train.sbatch deepspeed=zero3 reference=cached ...` trains one ZeRO-3 job of 4 ranks over
  gloo; its per-step losses equal a one-node 4-rank torchrun run of the same config; each file of the run
  directory and of the caches is written by exactly one process (a write trace taken inside every process), and
  the tokenized-data and reference caches are filled once for the whole job;
- a preemption signal to a 2-node job checkpoints, requeues and resumes on both nodes to the same losses;
- a rank killed on one node ends the whole job within a bounded time with a message that names it, and the next
  start resumes from the last checkpoint to the same losses;
- a Slurm sweep (hydra/launcher=slurm) runs each point on both nodes, and po-report reads the sweep.

One cluster for the session, one uninterrupted 2-node run for the module (the reference of the fault tests).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.runs import REPO, read_metrics
from tests.helpers.multinode import MultiNodeCluster, multinode_cluster  # noqa: F401  (fixture)
from tests.helpers.writes import ranks_by_host, read_trace, trace_env, tree, writers_by_path
from tests.helpers.slurm import job_env, job_log, release_when_requeued, submit, sweep_point

pytestmark = pytest.mark.slow

MAX_STEPS = 16
# One tiny ZeRO-3 job: 4 ranks x 1 pair per step, a loss record per step, short rows.
CONFIG = ["deepspeed=zero3", "reference=cached", f"trainer.max_steps={MAX_STEPS}", "trainer.logging_steps=1",
          "trainer.per_device_train_batch_size=1", "trainer.disable_tqdm=true", "data.max_rows=40",
          "data.max_length=64", "eval.before_training=false"]
RANKS_PER_NODE = 2


def _caches(root: Path) -> list[str]:
    return [f"data.cache_dir={root / 'tokenized'}", f"reference.dir={root / 'reference'}",
            f"model.warmup.dir={root / 'warmup'}"]


def _sbatch(cluster: MultiNodeCluster, log_dir: Path, run_dir: Path, *overrides: str, **env: str) -> str:
    """Submit slurm/train.sbatch on both nodes (a CPU job, RANKS_PER_NODE ranks each); return the job id."""
    job = {**job_env(NPROC_PER_NODE=str(RANKS_PER_NODE), RUN_DIR=str(run_dir)), "SLURM_CONF": str(cluster.conf),
           **env}
    cmd = cluster.on(0, "sbatch", "--parsable", "--nodes=2", "--gpus-per-node=0", f"--cpus-per-task={RANKS_PER_NODE}",
                     "--time=10", f"--output={log_dir}/%x-%j.out", str(REPO / "slurm" / "train.sbatch"), *overrides)
    return submit(cmd, job)


def _losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_node_run(tmp_path_factory) -> Path:
    """The reference: the same config as one 4-rank torchrun on this machine, outside Slurm."""
    root = tmp_path_factory.mktemp("one-node")
    run_dir = root / "run"
    env = {**job_env(DS_ACCELERATOR="cpu")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(2 * RANKS_PER_NODE),
           "--master_port", str(_free_port()), "-m", "po.cli", f"hydra.run.dir={run_dir}", "trainer.use_cpu=true",
           *CONFIG, *_caches(root / "caches")]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return run_dir


@dataclass
class TwoNodeRun:
    """The uninterrupted 2-node job: its folder (job log, run/, caches/, trace/), job id and final state."""

    root: Path
    job: str = ""
    state: str = ""

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    @property
    def trace(self) -> Path:
        return self.root / "trace"

    @property
    def log(self) -> str:
        return job_log(self.root, self.job)


@pytest.fixture(scope="module")
def two_node_run(multinode_cluster: MultiNodeCluster, tmp_path_factory) -> TwoNodeRun:  # noqa: F811
    """The uninterrupted 2-node job (empty caches, every process traced); the fault tests compare with it."""
    run = TwoNodeRun(tmp_path_factory.mktemp("two-node"))
    tracing = trace_env(run.trace, run.run_dir, run.caches, pythonpath=job_env()["PYTHONPATH"])
    began = time.monotonic()
    run.job = _sbatch(multinode_cluster, run.root, run.run_dir, *CONFIG, *_caches(run.caches), **tracing)
    run.state = multinode_cluster.wait_job(run.job, timeout=400)
    print(f"\n2-node ZeRO-3 job {run.job}: {run.state}, {time.monotonic() - began:.0f} s from sbatch to its end "
          f"(Slurm RunTime {multinode_cluster.job_field(run.job, 'RunTime')})")
    return run


def _require(run: TwoNodeRun) -> None:
    assert run.state == "COMPLETED", f"the uninterrupted 2-node job {run.job} ended {run.state}:\n{run.log[-6000:]}"


def test_two_node_zero3_job_matches_one_node_run_and_writes_each_file_once(
        two_node_run: TwoNodeRun, one_node_run: Path, multinode_cluster: MultiNodeCluster):  # noqa: F811
    """2 nodes x 2 ranks, ZeRO-3 over gloo, reference=cached on empty caches: the losses of a one-node 4-rank run;
    exactly the expected files, each written by one process (global rank 0 on node1); each cache filled once."""
    run = two_node_run
    _require(run)
    assert "2 node(s) x 2 rank(s)" in run.log
    assert multinode_cluster.job_field(run.job, "NodeList") == "node[1-2]"
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 4 and summary["steps"] == MAX_STEPS

    # The same training as one node with 4 ranks: ZeRO-3 over gloo between two hosts changes no number.
    two, one = _losses(run.run_dir), _losses(one_node_run)
    assert sorted(two) == list(range(1, MAX_STEPS + 1)) and sorted(one) == sorted(two)
    diffs = {step: abs(two[step] - one[step]) for step in two}
    print(f"2-node vs 1-node loss: max |diff| {max(diffs.values()):.2e} over {len(diffs)} steps")
    assert max(diffs.values()) <= 1e-4, diffs

    writes = read_trace(run.trace)
    # Ranks 0-1 ran on node1, 2-3 on node2 (each process leaves a start line with its host and RANK).
    assert ranks_by_host(writes) == {"node1": {0, 1}, "node2": {2, 3}}

    # One copy of every file: exactly these files, no per-rank copies, no temporary leftovers.
    model = {"model/", "model/chat_template.jinja", "model/config.json", "model/generation_config.json",
             "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json",
             "model/training_args.bin"}
    assert tree(run.run_dir) == {".hydra/", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
                                 ".po-lock", "checkpoints/", "cli.log", "data_fingerprint.json", "metrics.jsonl",
                                 "resolved_config.yaml", "run_id", "summary.json", *model}
    # ... and each written by exactly one process, global rank 0 (on node1), for the run dir and both caches.
    for root in (run.run_dir, run.caches):
        by_path = writers_by_path(writes, root)
        shared = {str(p): sorted(w) for p, w in by_path.items() if len(w) > 1}
        assert not shared, f"files written by more than one process: {shared}"
    writers = {(w.rank, w.host) for w in writes if w.kind != "start"}
    assert writers == {("0", "node1")}, writers
    traced = writers_by_path(writes, run.run_dir)
    for name in (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", ".po-lock", "cli.log",
                 "metrics.jsonl", "summary.json", "resolved_config.yaml", "run_id", "model"):
        assert Path(name) in traced, f"{name}: no write traced (the trace does not see it)"

    # The caches were filled once for the whole job: rank 0 tokenized and computed, the 3 others read its entries.
    tokenized = tree(run.caches / "tokenized")
    entries = [p for p in tokenized if p.count("/") == 1 and p.endswith("/")]
    assert len(entries) == 1, tokenized
    assert all(p.startswith(entries[0]) for p in tokenized), f"leftovers beside the entry: {tokenized}"
    assert len(list((run.caches / "reference").iterdir())) == 1, tree(run.caches / "reference")
    assert len(list((run.caches / "warmup").iterdir())) == 1, tree(run.caches / "warmup")  # the tiny model's warm-up
    log = run.log
    assert len(re.findall(r"data\[train\]: .*tokenized data: cache miss", log)) == 1, log[-6000:]
    assert len(re.findall(r"data\[train\]: .*tokenized data: cache hit", log)) == 3
    assert log.count("reference cache miss: computing") == 1
    assert log.count("reference cache hit") == 3
    assert (run.run_dir / "cli.log").read_text().count("data[train]: 36 pairs kept") == 1  # rank 0's log only


def _assert_same_losses(run_dir: Path, reference: Path, tol: float) -> float:
    """Every step logged once, in order, each loss equal to the reference run's to `tol`; returns the max diff."""
    steps = [m["step"] for m in read_metrics(run_dir) if "loss" in m]
    assert steps == sorted(set(steps)), f"a step was logged twice or a start trained from scratch: {steps}"
    got, want = _losses(run_dir), _losses(reference)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    diff = max(abs(got[s] - want[s]) for s in want)
    assert diff <= tol, {s: (got[s], want[s]) for s in want}
    return diff


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))


def _wait(condition, what: str, timeout: float = 240, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)


def _logged_step(run_dir: Path) -> int:
    try:
        return max((m["step"] for m in read_metrics(run_dir) if "loss" in m), default=0)
    except (OSError, ValueError):
        return 0  # not written yet, or a line being written


def test_preemption_signal_checkpoints_requeues_and_resumes_on_both_nodes(
        multinode_cluster: MultiNodeCluster, two_node_run: TwoNodeRun, tmp_path: Path):  # noqa: F811
    """Slurm's time-limit warning (USR1 to the batch script, as --signal=B:USR1@N sends it) reaches the ranks on
    both nodes: they checkpoint together and exit, the script requeues the job, and the requeued job resumes on
    both nodes from that checkpoint to the uninterrupted run's losses."""
    _require(two_node_run)
    cluster, run_dir = multinode_cluster, tmp_path / "run"
    job = _sbatch(cluster, tmp_path, run_dir, *CONFIG, *_caches(two_node_run.caches))
    _wait(lambda: _logged_step(run_dir) >= 1, "the first logged step")
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    seen = release_when_requeued(cluster, job)
    state = cluster.wait_job(job, timeout=400)
    log = job_log(tmp_path, job)
    assert state == "COMPLETED", f"job {job}: {state} (seen {seen})\n{log[-6000:]}\n{cluster.logs()}"
    assert "requeueing job" in log and int(cluster.job_field(job, "Restarts") or 0) >= 1
    for restart in (0, 1):  # both starts ran on both nodes
        assert f"(restart {restart}) on node[1-2]: 2 node(s) x 2 rank(s)" in log, log[-6000:]
    checkpoints = _checkpoint_steps(run_dir)
    assert checkpoints and checkpoints[0] < MAX_STEPS, checkpoints  # the preemption checkpoint, mid-run
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{checkpoints[0]}'}" in log
    diff = _assert_same_losses(run_dir, two_node_run.run_dir, 1e-5)
    print(f"\npreempted at step {checkpoints[0]}, resumed: max |loss diff| vs uninterrupted {diff:.2e}")
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == MAX_STEPS


def _training_processes(pids: list[int]) -> list[int]:
    """The torchrun agent's children among `pids`: not the agent itself, and not a short-lived child a rank forks
    (it carries the rank's command line until it execs)."""
    def read(pid: int, name: str) -> str:
        try:
            return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace")
        except FileNotFoundError:  # it has ended since it was listed
            return ""

    def parent(pid: int) -> int | None:
        stat = read(pid, "stat")
        return int(stat.rsplit(")", 1)[1].split()[1]) if stat else None

    agents = {pid for pid in pids if "torch.distributed.run" in read(pid, "cmdline")}
    return [pid for pid in pids if parent(pid) in agents]


def test_rank_killed_on_one_node_ends_the_job_and_the_next_start_resumes(
        multinode_cluster: MultiNodeCluster, two_node_run: TwoNodeRun, tmp_path: Path):  # noqa: F811
    """kill -9 of one training process on node2: the whole job ends within a bounded time (no rank left waiting
    on the dead one), the job log says which node and rank died and that the next start resumes; sbatch again with
    the same RUN_DIR resumes from the last checkpoint and ends with the uninterrupted run's losses."""
    _require(two_node_run)
    cluster, run_dir = multinode_cluster, tmp_path / "run"
    save = ["trainer.save_strategy=steps", "trainer.save_steps=4"]  # saving changes no number of the run
    job = _sbatch(cluster, tmp_path, run_dir, *CONFIG, *save, *_caches(two_node_run.caches))
    _wait(lambda: _checkpoint_steps(run_dir) and _logged_step(run_dir) > _checkpoint_steps(run_dir)[-1],
          "a logged step after the first checkpoint")
    ranks = _training_processes(cluster.processes(1, "po.cli"))
    assert len(ranks) == 2, ranks  # node2's two training processes
    environ = dict(v.split("=", 1) for v in Path(f"/proc/{ranks[-1]}/environ").read_text().split("\0") if "=" in v)
    os.kill(ranks[-1], signal.SIGKILL)
    killed = time.monotonic()
    state = cluster.wait_job(job, timeout=240)
    ended = time.monotonic() - killed
    log = job_log(tmp_path, job)
    print(f"\nkilled a rank on node2: job {state} {ended:.0f} s later")
    assert state == "FAILED" and ended < 120, f"job {job}: {state} after {ended:.0f} s\n{log[-6000:]}"
    newest = _checkpoint_steps(run_dir)[-1]
    failure = [line for line in log.splitlines() if line.startswith("po: training failed")]
    assert failure and f"rank {environ['RANK']} on node2 (exit code -9, SIGKILL) failed first" in failure[0], \
        log[-6000:]  # which node and rank died
    assert f"resumes from its newest complete checkpoint (checkpoint-{newest}" in log.split(failure[0])[1]

    again = _sbatch(cluster, tmp_path, run_dir, *CONFIG, *save, *_caches(two_node_run.caches))
    state = cluster.wait_job(again, timeout=400)
    log = job_log(tmp_path, again)
    assert state == "COMPLETED", f"job {again}: {state}\n{log[-6000:]}"
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{newest}'}" in log
    diff = _assert_same_losses(run_dir, two_node_run.run_dir, 1e-5)
    print(f"resumed from checkpoint-{newest}: max |loss diff| vs uninterrupted {diff:.2e}")


def test_sweep_points_span_both_nodes_and_po_report_reads_them(multinode_cluster: MultiNodeCluster,  # noqa: F811
                                                               tmp_path: Path):
    """po-train -m hydra/launcher=slurm hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=2: each point is one
    Slurm job on both nodes whose 4 submitit tasks join one torch.distributed job (rendezvous on the first node,
    reached from the other namespace); po-report reads the sweep."""
    cluster, sweep = multinode_cluster, tmp_path / "sweep"
    tiny = ["trainer.max_steps=4", "trainer.logging_steps=2", "trainer.per_device_train_batch_size=2",
            "trainer.disable_tqdm=true", "data.max_rows=40", "data.max_length=64", "eval.before_training=false",
            "model.warmup.steps=0"]  # the warm-up cache is tested by the 2-node job above
    cmd = cluster.on(0, sys.executable, "-m", "po.cli", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
                     "hydra.launcher.nodes=2", f"hydra.launcher.tasks_per_node={RANKS_PER_NODE}",
                     "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", "trainer.use_cpu=true",
                     "loss.beta=0.1,0.2", *tiny)
    env = {**job_env(PO_CACHE_DIR=str(tmp_path / "cache")), "SLURM_CONF": str(cluster.conf)}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + cluster.logs()
    jobs = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit() and "_" in p.name)
    assert len(jobs) == 2, jobs  # one Slurm job (an array task) per point
    for job in jobs:
        assert cluster.wait_job(job, timeout=120) == "COMPLETED"
        assert cluster.job_field(job, "NodeList") == "node[1-2]" and cluster.job_field(job, "NumTasks") == "4"
        logs = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.*"))
        for rank in range(4):  # every task joined through the first node's address
            assert re.search(rf"submitit task {rank} of 4 \(rendezvous node1:\d+\)", logs), logs[-3000:]
    for beta in ("0.1", "0.2"):
        summary = json.loads((sweep_point(sweep, f"loss.beta={beta}") / "summary.json").read_text())
        assert summary["world_size"] == 4 and summary["steps"] == 4
    report = subprocess.run([sys.executable, "-m", "po.cli.report", str(sweep)], capture_output=True, text=True,
                            env=job_env(), timeout=300)
    assert report.returncode == 0, report.stderr
    text = (sweep / "report.md").read_text()
    assert "2 of 2 runs finished" in text and "| dpo | 0.1 | 1 |" in text and "| dpo | 0.2 | 1 |" in text, text
