"""A full disk during a checkpoint or the final model write: one `po-train: error:` line naming the path, no
traceback, no partial files, the previous checkpoint intact; after space is freed the same command finishes like
the uninterrupted run. The disk is a small tmpfs the test mounts (skipped where mounting is not allowed)."""

import os
import subprocess

import pytest

from po.trainer import checkpoints
from po.trainer.reliable import CheckpointWriteError
from tests.helpers.faults import (JOB, SAVE_EVERY_3, assert_finished_like_reference, assert_one_line_error, finish,
                                  leftovers, run, start, wait_until)
from tests.helpers.runs import run_train

pytestmark = pytest.mark.slow


@pytest.fixture
def mount_tmpfs():
    mounted = []

    def mount(folder, size: str):
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")
        mounted.append(folder)

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full_at_a_checkpoint(tmp_path, mount_tmpfs):
    """checkpoints/ on a 2.5 MB tmpfs: checkpoint-3 (1.7 MB) fits, checkpoint-6 does not."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    mount_tmpfs(ckpts, "2500k")
    rc, out = run(run_dir, SAVE_EVERY_3)
    assert_one_line_error(rc, out, f"could not write the checkpoint of step 6 to {ckpts / 'checkpoint-6'}",
                          "No space left on device", f"{ckpts / 'checkpoint-3'} is intact", "Free space")
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-3"], "the partial checkpoint is removed"
    assert checkpoints.verify(ckpts / "checkpoint-3") is None
    assert not (run_dir / "model").exists() and not (run_dir / "summary.json").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(ckpts)], check=True)  # space is freed
    rc, out = run(run_dir, SAVE_EVERY_3)
    assert rc == 0, out[-3000:]
    assert f"resuming from {ckpts / 'checkpoint-3'}" in out
    assert_finished_like_reference(run_dir)


def test_disk_full_at_the_final_model_write(tmp_path, mount_tmpfs):
    """The run directory on a tmpfs that the test fills up once training is over, just before model/ is written."""
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    mount_tmpfs(run_dir, "16m")
    proc = start(run_dir, SAVE_EVERY_3, PO_FAULT_PAUSE_AT="end", PO_FAULT_PAUSE_FILE=str(marker))
    wait_until(proc, marker.exists)
    ballast = run_dir / "ballast"
    free = os.statvfs(run_dir).f_bavail * os.statvfs(run_dir).f_frsize
    ballast.write_bytes(b"\0" * (free - (100 << 10)))  # 100 KiB left: the log still fits, the model (560 KB) not
    marker.unlink()
    rc, out = finish(proc)
    assert_one_line_error(rc, out, f"could not write {run_dir / 'model'}", "No space left on device", "free space")
    assert not (run_dir / "model").exists() and not (run_dir / "summary.json").exists()
    assert leftovers(run_dir) == [], "the partial model is removed"
    assert checkpoints.verify(run_dir / "checkpoints" / "checkpoint-12") is None
    ballast.unlink()  # space is freed
    rc, out = run(run_dir, SAVE_EVERY_3)
    assert rc == 0, out[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-12'}" in out
    assert_finished_like_reference(run_dir)


def test_read_only_checkpoint_folder_is_one_line(tmp_path, mount_tmpfs):
    """checkpoints/ on a read-only file system: the first checkpoint fails with one error naming it (in-process:
    a `CheckpointWriteError` is a `POError`, which the CLI prints as one line)."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    mount_tmpfs(ckpts, "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(ckpts)], check=True)
    with pytest.raises(CheckpointWriteError) as err:
        run_train(run_dir, JOB + SAVE_EVERY_3)
    message = str(err.value)
    assert "\n" not in message and f"step 3 to {ckpts / 'checkpoint-3'}: Read-only file system" in message
    assert "no earlier checkpoint exists" in message and "Make it writable" in message
    assert not (run_dir / "summary.json").exists()
