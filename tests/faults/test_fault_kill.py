"""kill -9: nothing is lost beyond the last complete checkpoint, and the resumed run is the uninterrupted one.

- killed while training: the next start resumes from the newest checkpoint; steps the dead run logged after it are
  dropped from metrics.jsonl and recomputed identically.
- killed while writing a checkpoint: the half-written one (only under checkpoints/.staging) is ignored with a
  warning and removed, and save_total_limit=1 had not deleted the only complete checkpoint.
"""

import signal

import pytest

from tests.helpers.faults import assert_same_losses, loss_steps, run, start, wait_for_step, wait_until

pytestmark = pytest.mark.slow
SAVE_EVERY_3 = ["trainer.save_strategy=steps", "trainer.save_steps=3"]


def test_kill_during_training_resumes_from_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, SAVE_EVERY_3, PO_FAULT_STEP_SLEEP="0.3")
    wait_for_step(proc, run_dir, 7)   # checkpoint-6 is written before step 7 starts
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.log.close()
    logged = max(s for s, _ in loss_steps(run_dir))
    newest = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert newest >= 6 and logged > newest, "the dead run had logged steps beyond its last checkpoint"
    rc, out = run(run_dir, SAVE_EVERY_3)
    assert rc == 0, out[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{newest}'}" in out
    assert_same_losses(run_dir)


def test_kill_during_checkpoint_write_keeps_previous_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    limit = SAVE_EVERY_3 + ["trainer.save_total_limit=1"]
    proc = start(run_dir, limit, PO_FAULT_BLOCK_SAVE_AT="6")
    wait_until(proc, lambda: (run_dir / "BLOCKED").exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.log.close()
    ckpts = run_dir / "checkpoints"
    assert (ckpts / ".staging" / "checkpoint-6" / "model.safetensors").is_file(), "killed mid-write"
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-3"]
    rc, out = run(run_dir, limit)
    assert rc == 0, out[-3000:]
    assert "ignoring incomplete checkpoint" in out and "checkpoint-6" in out
    assert f"resuming from {ckpts / 'checkpoint-3'}" in out
    assert not (ckpts / ".staging").exists()
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-12"], "save_total_limit=1 applied"
    assert_same_losses(run_dir)
