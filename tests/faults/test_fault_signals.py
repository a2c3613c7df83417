"""Preemption: SIGUSR1 and SIGTERM make a running job checkpoint, write RUN_DIR/PREEMPTED and exit 0; the same
command resumes at the saved step, and the whole run's per-step losses equal an uninterrupted run's to 1e-6."""

import signal

import pytest

from tests.helpers.faults import assert_same_losses, finish, loss_steps, run, start, wait_for_step

pytestmark = pytest.mark.slow


def _preempt(run_dir, sig, after_step):
    proc = start(run_dir, PO_FAULT_STEP_SLEEP="0.3")
    wait_for_step(proc, run_dir, after_step)
    proc.send_signal(sig)
    rc, out = finish(proc)
    assert rc == 0, out[-3000:]
    assert "po-train: preempted" in out
    marker = (run_dir / "PREEMPTED").read_text()
    step = int(marker.split("step:")[1])
    assert sig.name in marker
    assert (run_dir / "checkpoints" / f"checkpoint-{step}" / "po_checkpoint.json").is_file()
    assert loss_steps(run_dir)[-1][0] == step, "the last logged step is the checkpointed one"
    assert not (run_dir / "summary.json").exists()
    return step


def test_sigusr1_then_sigterm_then_resume_matches_uninterrupted(tmp_path):
    run_dir = tmp_path / "run"
    first = _preempt(run_dir, signal.SIGUSR1, after_step=2)
    assert first < 12
    second = _preempt(run_dir, signal.SIGTERM, after_step=first + 2)
    assert second > first
    rc, out = run(run_dir)
    assert rc == 0, out[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{second}'}" in out
    assert not (run_dir / "PREEMPTED").exists()
    assert (run_dir / "summary.json").is_file()
    assert_same_losses(run_dir)
