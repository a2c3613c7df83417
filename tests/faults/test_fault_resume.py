"""Exact resume where it is hardest: gradient accumulation, an epoch that does not divide into optimizer steps,
and a checkpoint in the middle of the second epoch. Every step's loss must equal the uninterrupted run's."""

import shutil

import pytest

from tests.helpers.faults import TOL, loss_steps
from tests.helpers.runs import run_train

pytestmark = pytest.mark.slow
# 45 training pairs / 4 per micro-batch = 11 micro-batches per epoch; 2 per optimizer step -> 6 steps per epoch,
# the last one with a single micro-batch; 14 steps = 2.4 epochs; checkpoint at step 7 (inside epoch 2).
JOB = ["trainer.max_steps=14", "trainer.logging_steps=1", "trainer.disable_tqdm=true", "data.max_length=64",
       "eval.before_training=false", "data.max_rows=50", "trainer.per_device_train_batch_size=4",
       "trainer.gradient_accumulation_steps=2", "trainer.save_strategy=steps", "trainer.save_steps=7"]


def test_resume_mid_second_epoch_with_accumulation_is_exact(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_train(full, JOB)
    shutil.copytree(full, resumed)   # then make it a job killed after checkpoint-7
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-14")
    shutil.rmtree(resumed / "model")
    (resumed / "summary.json").unlink()
    run_train(resumed, JOB)
    expected, got = loss_steps(full), loss_steps(resumed)
    assert [s for s, _ in got] == list(range(1, 15))
    assert all(abs(a - b) <= TOL for (_, a), (_, b) in zip(expected, got))
