"""The end of a run survives a kill at any point: the rerun of the same command gives the uninterrupted run's result.

After the last checkpoint (at max_steps) a run evaluates, writes model/ and then summary.json. A kill -9 anywhere in
there, or a preemption at the last step, followed by the same command: the rerun resumes from the checkpoint at
max_steps, trains no step (the Trainer alone would train one more), and writes model/ and summary.json whole.
Weights and eval metrics equal the uninterrupted run's to 1e-6, and every step is logged once.
"""

import signal

import pytest

from tests.helpers.faults import (SAVE_EVERY_3, assert_finished_like_reference, finish, leftovers, output, run, start,
                                  wait_until)

pytestmark = pytest.mark.slow


def _kill_at(run_dir, marker, point: str) -> str:
    proc = start(run_dir, SAVE_EVERY_3, PO_FAULT_PAUSE_AT=point, PO_FAULT_PAUSE_FILE=str(marker))
    wait_until(proc, marker.exists)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.log.close()
    marker.unlink()
    return output(proc)


def test_kill_after_last_checkpoint_during_model_write_and_during_summary_write(tmp_path):
    """One run directory, killed at the three points in turn: each start resumes at once (the dead process's
    lock is gone) from checkpoint-12; the last start finishes like the uninterrupted run."""
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    resumed = f"resuming from {run_dir / 'checkpoints' / 'checkpoint-12'}"

    _kill_at(run_dir, marker, "end")  # after training, the last checkpoint and the final evaluation
    assert (run_dir / "checkpoints" / "checkpoint-12").is_dir()
    assert not (run_dir / "model").exists() and not (run_dir / "summary.json").exists()

    out = _kill_at(run_dir, marker, "export")  # model files written to a temporary folder, not yet renamed
    assert resumed in out
    assert not (run_dir / "model").exists() and not (run_dir / "summary.json").exists()
    assert [p for p in leftovers(run_dir) if "model" in p], "killed inside the model write"

    out = _kill_at(run_dir, marker, "summary")  # summary.json's temporary file written, not yet renamed
    assert resumed in out and "removed" in out, "the stale temporary model folder is cleaned up"
    assert (run_dir / "model" / "model.safetensors").is_file() and not (run_dir / "summary.json").exists()
    assert [p for p in leftovers(run_dir) if "summary.json" in p], "killed inside the summary write"

    rc, out = run(run_dir, SAVE_EVERY_3)
    assert rc == 0, out[-3000:]
    assert resumed in out
    assert_finished_like_reference(run_dir)


def test_preemption_at_the_last_step_then_rerun(tmp_path):
    """SIGUSR1 during step 12 of 12: the run saves checkpoint-12 and exits 0; the rerun only evaluates and exports."""
    run_dir = tmp_path / "run"
    rc, out = finish(start(run_dir, PO_FAULT_SIGNAL_AT="12"))
    assert rc == 0 and "po-train: preempted" in out, out[-3000:]
    assert "step: 12" in (run_dir / "PREEMPTED").read_text()
    assert not (run_dir / "summary.json").exists()
    rc, out = run(run_dir)
    assert rc == 0, out[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-12'}" in out
    assert not (run_dir / "PREEMPTED").exists()
    assert_finished_like_reference(run_dir)
