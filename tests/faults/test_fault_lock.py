"""One process per run directory: a second start is refused at once, naming the holder, on every rank of a
multi-process launch and without hanging; the first run is not disturbed. (A killed run's lock dies with it:
tests/faults/test_fault_end.py and test_fault_kill.py resume right after a kill -9.)"""

import json
import os
import socket
import subprocess
import sys

import pytest

from po.run.lock import RunLock
from po.run.paths import RunPaths
from tests.helpers.faults import (REPO, assert_one_line_error, assert_same_losses, env, error_lines, finish, run, start,
                                  wait_until)

LOCK_FILE = RunPaths('.').lock.name

pytestmark = pytest.mark.slow


def test_second_start_into_a_running_dir_is_refused_and_the_first_finishes(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    first = start(run_dir, PO_FAULT_PAUSE_AT="step:6", PO_FAULT_PAUSE_FILE=str(marker))
    wait_until(first, marker.exists)  # the first run is in the middle of its training
    rc, out = run(run_dir)  # the same command
    assert_one_line_error(rc, out, "is in use by another po-train process", f"pid {first.pid} on host ")
    marker.unlink()
    rc, out = finish(first)
    assert rc == 0, out[-3000:]
    assert_same_losses(run_dir)  # every step once, as in the uninterrupted run


# Two CPU processes (gloo), the smallest job: 2 optimizer steps of 2 x 2 pairs.
SMALL = ["trainer.use_cpu=true", "trainer.max_steps=2", "trainer.logging_steps=1", "trainer.disable_tqdm=true",
         "data.max_rows=40", "data.max_length=64", "trainer.per_device_train_batch_size=2",
         "trainer.per_device_eval_batch_size=4", "eval.before_training=false"]


def _torchrun(run_dir, timeout: float) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "po.cli", *SMALL, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=REPO, env=env(DS_ACCELERATOR="cpu"), capture_output=True, text=True,
                          timeout=timeout)


def test_two_process_run_writes_its_directory_once(tmp_path):
    run_dir = tmp_path / "run"
    proc = _torchrun(run_dir, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2]
    assert "trainer.max_steps=2" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "pid " in (run_dir / LOCK_FILE).read_text()


def test_second_two_process_start_is_refused_on_every_rank_without_hanging(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = RunLock(run_dir).acquire()  # this test process is the running job
    holder.record_holder()
    try:
        proc = _torchrun(run_dir, timeout=240)  # a hang would end in TimeoutExpired
    finally:
        holder.release()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = error_lines(out)
    assert len(errors) == 2, out[-4000:]  # one line from each rank
    assert all("is in use by another po-train process" in e and f"pid {os.getpid()} on host" in e for e in errors)
    assert "exitcode  : 2" in out and out.count("Traceback") == 1 and "ChildFailedError" in out, out[-4000:]
    # (the one traceback is torchrun's own report that its workers exited with code 2)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE], "the refused start wrote nothing"
