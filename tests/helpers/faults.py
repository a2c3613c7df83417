"""Helpers for the fault tests: start `po-train` (through fault_run.py) in a subprocess, wait for a step, signal it,
and the uninterrupted reference run every interrupted run is compared with."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# One small job: 12 optimizer steps of 8 pairs, a loss record per step, short sequences.
JOB = ["trainer.max_steps=12", "trainer.logging_steps=1", "trainer.disable_tqdm=true", "data.max_length=64",
       "eval.before_training=false"]
TOL = 1e-6


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out.update(extra)
    return out


def start(run_dir: Path, overrides: list[str] = (), **fault_env: str) -> subprocess.Popen:
    """`po-train JOB OVERRIDES hydra.run.dir=RUN_DIR` with faults from `fault_env` (see fault_run.py)."""
    cmd = [sys.executable, str(HERE / "fault_run.py"), *JOB, *overrides, f"hydra.run.dir={run_dir}"]
    log = open(Path(run_dir).parent / f"{Path(run_dir).name}.{time.monotonic_ns()}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=run_dir.parent,
                            env=env(**fault_env))
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> str:
    return Path(proc.log.name).read_text()


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    proc.log.close()
    return rc, output(proc)


def run(run_dir: Path, overrides: list[str] = (), **fault_env: str) -> tuple[int, str]:
    return finish(start(run_dir, overrides, **fault_env))


def loss_steps(run_dir: Path) -> list[tuple[int, float]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if "loss" in record:
            out.append((record["step"], record["loss"]))
    return out


def wait_until(proc: subprocess.Popen, condition, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the awaited point:\n{output(proc)[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.1)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    wait_until(proc, lambda: any(s >= step for s, _ in loss_steps(run_dir)))


def send(proc: subprocess.Popen, sig: signal.Signals) -> None:
    os.kill(proc.pid, sig)


SAVE_EVERY_3 = ["trainer.save_strategy=steps", "trainer.save_steps=3"]


@functools.cache
def reference_run() -> Path:
    """The uninterrupted job, with checkpoints at steps 3, 6, 9 and 12, run through the CLI in a subprocess like
    the runs it is compared with (saving checkpoints does not change what a run computes). Tests that change a run
    directory work on a copy."""
    run_dir = Path(tempfile.mkdtemp(prefix="po-faults-ref-")) / "run"
    run_dir.parent.mkdir(exist_ok=True)
    rc, out = run(run_dir, SAVE_EVERY_3)
    assert rc == 0, out[-3000:]
    return run_dir


def reference_losses() -> dict[int, float]:
    """Per-step losses of the uninterrupted job."""
    return dict(loss_steps(reference_run()))


def assert_same_losses(run_dir: Path) -> None:
    """Every step logged exactly once, and each loss equal to the uninterrupted run's to TOL."""
    got = loss_steps(run_dir)
    steps = [s for s, _ in got]
    assert steps == sorted(set(steps)), f"duplicated or unordered steps in metrics.jsonl: {steps}"
    ref = reference_losses()
    assert steps == sorted(ref), f"steps {steps} != uninterrupted {sorted(ref)}"
    for step, loss in got:
        assert abs(loss - ref[step]) <= TOL, f"step {step}: loss {loss} != uninterrupted {ref[step]}"



def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("po-train: error:")]


def assert_one_line_error(rc: int, out: str, *needles: str) -> str:
    """Exit code 2, exactly one `po-train: error:` line containing every needle, and no traceback."""
    errors = error_lines(out)
    assert rc == 2 and len(errors) == 1, f"rc {rc}, errors {errors}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def tree(run_dir: Path) -> dict[str, str]:
    """Every file (sha256 of its bytes) and folder under `run_dir`, recursively, by relative path."""
    out = {}
    for path in sorted(Path(run_dir).rglob("*")):
        rel = str(path.relative_to(run_dir))
        out[rel] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files or folders of interrupted atomic writes, anywhere under `run_dir`."""
    return sorted(str(p) for p in Path(run_dir).rglob("*") if p.name.endswith(".tmp") or p.name == ".staging")


def assert_finished_like_reference(run_dir: Path) -> None:
    """The finished run equals the uninterrupted one: step count, every step logged once with the same loss, the
    final evaluation logged once, eval metrics in summary.json and every weight of model/ to TOL."""
    from safetensors.torch import load_file

    ref = reference_run()
    got_summary = json.loads((run_dir / "summary.json").read_text())
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert got_summary["steps"] == ref_summary["steps"] == 12
    assert_same_losses(run_dir)
    assert _eval_records(run_dir) == _eval_records(ref) == [12], "the final evaluation is logged once, at step 12"
    compared = 0
    for key, value in ref_summary["eval"].items():
        if isinstance(value, float) and not key.endswith(("_runtime", "_per_second")):
            assert abs(got_summary["eval"][key] - value) <= TOL, (key, got_summary["eval"][key], value)
            compared += 1
    assert compared >= 5
    got, want = load_file(run_dir / "model" / "model.safetensors"), load_file(ref / "model" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert (got[name] - want[name]).abs().max().item() <= TOL, name
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (run_dir / "model" / name).read_bytes() == (ref / "model" / name).read_bytes(), name
    assert leftovers(run_dir) == []


def _eval_records(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "eval_loss" in r]


@functools.cache
def finished_run() -> Path:
    """An in-process run of JOB with checkpoints at steps 3, 6, 9, 12 (tests copy it before changing anything)."""
    from tests.helpers.runs import run_train

    run_dir = Path(tempfile.mkdtemp(prefix="po-faults-finished-")) / "run"
    run_train(run_dir, JOB + SAVE_EVERY_3)
    return run_dir


def crashed_copy(dest: Path) -> Path:
    """A copy of `finished_run()` as a job killed after its last checkpoint: no summary, no final model."""
    import shutil

    shutil.copytree(finished_run(), dest)
    (dest / "summary.json").unlink()
    shutil.rmtree(dest / "model")
    return dest


def assert_same_losses_in_process(run_dir: Path) -> None:
    """Like `assert_same_losses`, against the in-process `finished_run()` (same process, same threads)."""
    got, ref = loss_steps(run_dir), dict(loss_steps(finished_run()))
    steps = [s for s, _ in got]
    assert steps == sorted(ref), f"steps {steps} != uninterrupted {sorted(ref)}"
    for step, loss in got:
        assert abs(loss - ref[step]) <= TOL, f"step {step}: loss {loss} != uninterrupted {ref[step]}"
