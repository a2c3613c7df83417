"""Damaged checkpoints and a full disk: detected, reported in one message, nothing silently used or lost."""

import errno
import logging

import pytest
import torch

from po.errors import POError
from po.trainer import checkpoints
from po.trainer.reliable import CheckpointWriteError
from tests.helpers.faults import JOB, SAVE_EVERY_3, assert_same_losses_in_process, crashed_copy
from tests.helpers.runs import run_train

pytestmark = pytest.mark.slow


def _flip_bytes(path, at=0.5):
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + 8] = bytes(b ^ 0xFF for b in data[i:i + 8])
    path.write_bytes(bytes(data))


def test_corrupted_and_truncated_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    run_dir = crashed_copy(tmp_path / "run")
    ckpts = run_dir / "checkpoints"
    _flip_bytes(ckpts / "checkpoint-12" / "model.safetensors")         # same size, different bytes
    optimizer = ckpts / "checkpoint-9" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])                # truncated
    with caplog.at_level(logging.INFO, logger="po"):
        run_train(run_dir, JOB + SAVE_EVERY_3)
    assert "model.safetensors does not match its sha256" in caplog.text
    assert "optimizer.pt has 1000 bytes" in caplog.text
    assert "resuming from" in caplog.text and "checkpoint-6 (step 6)" in caplog.text
    assert sorted(p.name for p in (ckpts / checkpoints.SUPERSEDED).iterdir()) == ["checkpoint-12", "checkpoint-9"]
    assert checkpoints.verify(ckpts / "checkpoint-12") is None   # rewritten by the resumed run
    assert_same_losses_in_process(run_dir)


def test_explicit_resume_from_damaged_checkpoint_refuses(tmp_path):
    run_dir = crashed_copy(tmp_path / "run")
    target = run_dir / "checkpoints" / "checkpoint-12"
    _flip_bytes(target / "optimizer.pt")
    with pytest.raises(POError, match="this checkpoint is damaged: optimizer.pt does not match"):
        run_train(run_dir, JOB + [f"trainer.resume={target}"])


def test_no_intact_checkpoint_refuses_instead_of_restarting(tmp_path):
    run_dir = crashed_copy(tmp_path / "run")
    for ckpt in (run_dir / "checkpoints").glob("checkpoint-*"):
        _flip_bytes(ckpt / "model.safetensors")
    with pytest.raises(POError, match="no intact checkpoint in .*trainer.overwrite=true"):
        run_train(run_dir, JOB)


def test_disk_full_during_checkpoint_fails_clearly_and_keeps_previous(tmp_path, monkeypatch):
    real_save = torch.save

    def disk_full_at_step_6(obj, f, *args, **kwargs):
        if "checkpoint-6" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_6)
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointWriteError) as err:
        run_train(run_dir, JOB + SAVE_EVERY_3)
    message = str(err.value)
    assert "step 6" in message and "No space left on device" in message
    assert "checkpoint-3 is intact" in message and "trainer.resume=auto" in message
    ckpts = run_dir / "checkpoints"
    assert [p.name for p in ckpts.glob("checkpoint-*")] == ["checkpoint-3"]
    assert checkpoints.verify(ckpts / "checkpoint-3") is None
    assert not (ckpts / ".staging" / "checkpoint-6").exists(), "the partial copy is removed to free space"
    monkeypatch.undo()
    run_train(run_dir, JOB + SAVE_EVERY_3)   # space is back: resume from step 3
    assert_same_losses_in_process(run_dir)
