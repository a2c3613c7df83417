"""Checkpoints this run directory did not write hold pickles from elsewhere: they are loaded only with
trainer.trust_checkpoint=true. A run's own checkpoints (their manifest carries its run id) need nothing."""

import shutil

import pytest
import torch

import po.run.job
from po.errors import ConfigError
from po.run.paths import RunPaths
from po.trainer import checkpoints
from tests.helpers.faults import JOB, SAVE_EVERY_3, TOL, finished_run, loss_steps
from tests.helpers.runs import run_train

RUN_ID = RunPaths('.').run_id.name

pytestmark = pytest.mark.slow
UNTRUSTED = "was not written by this run directory"


def _losses_from(run_dir, first_step):
    ref = dict(loss_steps(finished_run()))
    got = loss_steps(run_dir)
    assert [s for s, _ in got] == list(range(first_step, 13))
    assert all(abs(loss - ref[step]) <= TOL for step, loss in got)


def test_each_checkpoint_carries_the_run_id(tmp_path):
    run_id = (finished_run() / RUN_ID).read_text().strip()
    for ckpt in checkpoints.checkpoints_by_step(finished_run() / "checkpoints"):
        assert checkpoints.read_manifest(ckpt)["run_id"] == run_id


def test_resume_from_another_runs_checkpoint_needs_trust(tmp_path, monkeypatch):
    other = finished_run() / "checkpoints" / "checkpoint-9"
    run_dir = tmp_path / "run"

    def no_loading(*args, **kwargs):
        raise AssertionError("something was loaded before the refusal")

    with monkeypatch.context() as m:
        m.setattr(torch, "load", no_loading)
        m.setattr(po.run.job, "build_trainer", no_loading)
        with pytest.raises(ConfigError, match=f"trainer.resume={other}: checkpoint {other} {UNTRUSTED} .*outside "
                                              "this run directory.*pickles.*trainer.trust_checkpoint=true"):
            run_train(run_dir, JOB + [f"trainer.resume={other}"])
    assert [p.name for p in run_dir.iterdir()] == [".po-lock"], "nothing but the lock file was written"

    run_train(run_dir, JOB + [f"trainer.resume={other}", "trainer.trust_checkpoint=true"])
    _losses_from(run_dir, 10)  # it did continue from the other run's step 9


def test_checkpoint_copied_into_the_run_dir_needs_trust(tmp_path):
    run_dir = tmp_path / "run"
    run_train(run_dir, JOB + SAVE_EVERY_3 + ["trainer.max_steps=3"])  # a run of its own, with checkpoint-3
    (run_dir / "summary.json").unlink()  # as if it had died after that checkpoint
    shutil.copytree(finished_run() / "checkpoints" / "checkpoint-9", run_dir / "checkpoints" / "checkpoint-9")
    with pytest.raises(ConfigError, match=f"trainer.resume=auto: checkpoint .*checkpoint-9 {UNTRUSTED} .*copied "
                                          "here from another run.*trainer.trust_checkpoint=true"):
        run_train(run_dir, JOB + SAVE_EVERY_3)
    run_train(run_dir, JOB + SAVE_EVERY_3 + ["trainer.trust_checkpoint=true"])
    assert (run_dir / "summary.json").is_file()
    steps = [s for s, _ in loss_steps(run_dir)]
    assert steps == [1, 2, 3, 10, 11, 12]  # its own 3 steps, then from the trusted checkpoint-9
    own = (run_dir / RUN_ID).read_text().strip()
    assert checkpoints.read_manifest(run_dir / "checkpoints" / "checkpoint-12")["run_id"] == own
