"""Slurm job scripts and Hydra sweeps on Slurm, against a real one-node Slurm (tests/helpers/slurm.py).

Slurm is installed by slurm/install_test_slurm.sh (CI) and started once per session by the fixture; without it
the tests marked `needs_slurm` are skipped with the reason. The submitit_local sweep and the script syntax checks
need no Slurm.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.runs import REPO, read_metrics
from tests.helpers.slurm import (SlurmCluster, job_env, job_log, release_when_requeued, slurm_cluster,  # noqa: F401
                                 submit, sweep_point)

# A tiny job: few steps, no progress bars, no evaluation before training.
TINY = ["trainer.max_steps=4", "trainer.logging_steps=2", "trainer.disable_tqdm=true", "eval.before_training=false"]


def _sbatch(cluster: SlurmCluster, tmp_path: Path, run_dir: Path, *args: str, sbatch_options: tuple = ()) -> str:
    """Submit slurm/train.sbatch as a CPU job with 2 ranks on the node; return the job id."""
    env = {**job_env(NPROC_PER_NODE="2", RUN_DIR=str(run_dir)), "SLURM_CONF": str(cluster.conf)}
    cmd = ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=2", "--time=10",
           f"--output={tmp_path}/%x-%j.out", *sbatch_options, str(REPO / "slurm" / "train.sbatch"), *args]
    return submit(cmd, env)


def test_slurm_scripts_parse():
    """`bash -n` on every script in slurm/: a syntax error would only show up on the cluster."""
    scripts = sorted(p for p in (REPO / "slurm").iterdir() if p.suffix in {".sh", ".sbatch"})
    assert {p.name for p in scripts} >= {"train.sbatch", "install_test_slurm.sh"}
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert script.read_text().splitlines()[1].startswith("#"), f"{script.name}: first lines say how to run it"


@pytest.mark.slow
def test_sbatch_trains_tiny_dpo_with_two_ranks(slurm_cluster: SlurmCluster, tmp_path: Path):
    """sbatch slurm/train.sbatch OVERRIDES: a 2-rank CPU job on the node runs to completion into the pinned RUN_DIR."""
    run_dir = tmp_path / "run"
    job = _sbatch(slurm_cluster, tmp_path, run_dir, *TINY, "loss.beta=0.2")
    state = slurm_cluster.wait_job(job, timeout=300)
    log = job_log(tmp_path, job)
    assert state == "COMPLETED", f"job {job}: {state}\n{log}\n{slurm_cluster.logs()}"
    assert "1 node(s) x 2 rank(s)" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "model" / "tokenizer.json").is_file()
    assert "beta: 0.2" in (run_dir / "resolved_config.yaml").read_text()  # the override reached every rank


@pytest.mark.slow
def test_submitit_slurm_sweep_runs_one_job_per_point(slurm_cluster: SlurmCluster, tmp_path: Path):
    """po-train -m hydra/launcher=slurm loss.beta=0.1,0.2: two Slurm jobs, each finishes with its summary. Each
    point runs as 2 submitit tasks (as on a 2-GPU node), which po.cli.train joins into one 2-rank job (gloo on CPU)."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "po.cli", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
           "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1", "hydra.launcher.tasks_per_node=2",
           "trainer.use_cpu=true", "loss.beta=0.1,0.2", *TINY]
    out = subprocess.run(cmd, cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + slurm_cluster.logs()
    for beta in ("0.1", "0.2"):
        summary = json.loads((sweep_point(sweep, f"loss.beta={beta}") / "summary.json").read_text())
        assert summary["steps"] == 4 and summary["world_size"] == 2
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit() and "_" in p.name)
    assert len(tasks) == 2, tasks  # one Slurm job (an array task, JOBID_INDEX) per point
    for job in tasks:  # submitit reads the result file before Slurm has closed the job: wait for the state
        assert slurm_cluster.wait_job(job, timeout=120) == "COMPLETED"


@pytest.mark.slow
def test_sweep_sbatch_drives_a_sweep_from_a_job(slurm_cluster: SlurmCluster, tmp_path: Path):
    """sbatch slurm/sweep.sbatch OVERRIDES: the driver runs as a Slurm job and submits the point as its own job."""
    sweep = tmp_path / "sweep"
    env = {**job_env(), "SLURM_CONF": str(slurm_cluster.conf)}
    cmd = ["sbatch", "--parsable", "--time=10", f"--output={tmp_path}/%x-%j.out", str(REPO / "slurm" / "sweep.sbatch"),
           f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1",
           "loss.beta=0.3", *TINY]
    driver = submit(cmd, env)
    state = slurm_cluster.wait_job(driver, timeout=400)
    assert state == "COMPLETED", f"driver {driver}: {state}\n{job_log(tmp_path, driver)}"
    summary = json.loads((sweep_point(sweep, "loss.beta=0.3") / "summary.json").read_text())
    assert summary["steps"] == 4
    points = [p.name for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit()]  # one point: no array
    assert len(points) == 1 and points[0] != driver  # the point ran as a Slurm job of its own
    assert slurm_cluster.wait_job(points[0], timeout=120) == "COMPLETED"


def _wait_for_step(run_dir: Path, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").is_file():
            steps = [m["step"] for m in read_metrics(run_dir) if "loss" in m]
            if steps:
                return steps[-1]
        time.sleep(0.5)
    raise AssertionError(f"no training step logged in {run_dir} after {timeout} s")


@pytest.mark.slow
def test_pre_timeout_signal_checkpoints_requeues_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path):
    """Slurm's warning signal (USR1 to the batch script, as --signal=B:USR1@N sends it) while training: the ranks
    checkpoint and exit, the script requeues the job (same id, same run dir), and the second start resumes from
    the checkpoint: logged steps keep increasing across both starts and the run ends at max_steps."""
    run_dir = tmp_path / "run"
    max_steps = 100
    job = _sbatch(slurm_cluster, tmp_path, run_dir, f"trainer.max_steps={max_steps}", "trainer.logging_steps=5",
                  "trainer.disable_tqdm=true", "eval.before_training=false")
    _wait_for_step(run_dir)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)  # what Slurm sends at time limit minus N s
    seen = release_when_requeued(slurm_cluster, job)
    state = slurm_cluster.wait_job(job, timeout=420)
    log = job_log(tmp_path, job)
    details = slurm_cluster.run("scontrol", "show", "job", job, check=False).stdout
    assert state == "COMPLETED", f"job {job}: {state} (seen {seen})\n{details}\n{log}\n{slurm_cluster.logs()}"
    assert "requeueing job" in log, log
    assert int(slurm_cluster.job_field(job, "Restarts") or 0) >= 1
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[0] < max_steps, checkpoints  # the preemption checkpoint, mid-run
    steps = [m["step"] for m in read_metrics(run_dir) if "loss" in m]
    assert steps == sorted(set(steps)), f"a start trained from scratch instead of resuming: {steps}"
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == max_steps
    assert (run_dir / "model" / "config.json").is_file()


@pytest.mark.slow
def test_submitit_point_checkpoints_on_signal_requeues_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path):
    """A sweep point on Slurm (hydra/launcher=slurm) gets the time-limit warning (USR1 to the job's processes, as
    the launcher's --signal=USR1@N sends it): it checkpoints, po.cli.train requeues it, the requeued point resumes in
    the same run dir and the sweep returns only when it has finished."""
    sweep = tmp_path / "sweep"
    max_steps = 100
    cmd = [sys.executable, "-m", "po.cli", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
           "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1", "loss.beta=0.1,0.2",
           f"trainer.max_steps={max_steps}", "trainer.logging_steps=5", "trainer.disable_tqdm=true",
           "eval.before_training=false"]
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.monotonic() + 240
        while not (sweep.is_dir() and any(sweep.glob("*loss.beta=0.1*/metrics.jsonl"))):
            assert time.monotonic() < deadline and driver.poll() is None, "the sweep point never started training"
            time.sleep(0.5)
        run_dir = sweep_point(sweep, "loss.beta=0.1")
        _wait_for_step(run_dir)
        job = next(p.name for p in (sweep / ".submitit").iterdir() if p.name.endswith("_0"))
        slurm_cluster.run("scancel", "--signal=USR1", job)
        release_when_requeued(slurm_cluster, job)
        output, _ = driver.communicate(timeout=420)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output[-4000:]
    assert int(slurm_cluster.job_field(job, "Restarts") or 0) >= 1, output[-4000:]
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[0] < max_steps, checkpoints
    steps = [m["step"] for m in read_metrics(run_dir) if "loss" in m]
    assert steps == sorted(set(steps)), f"the requeued point trained from scratch instead of resuming: {steps}"
    for point in ("loss.beta=0.1", "loss.beta=0.2"):
        assert json.loads((sweep_point(sweep, point) / "summary.json").read_text())["steps"] == max_steps
