"""Run directories are never overwritten by accident, and resume refuses data that changed since the run began."""

import json
import shutil

import pytest
from conftest import read_metrics, run_train
from fault_helpers import JOB, SAVE_EVERY_3, finished_run

from po.data.toy import TOY_PATH
from po.errors import ConfigError, POError

pytestmark = pytest.mark.slow


def test_new_run_into_used_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run(), run_dir)
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run .*hydra.run.dir.*trainer.overwrite=true"):
        run_train(run_dir, JOB + ["trainer.resume=never"])
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_finished_run_without_checkpoint_is_not_restarted(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run(), run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    summary = (run_dir / "summary.json").read_text()
    with pytest.raises(ConfigError, match="holds a finished run .*trainer.overwrite=true"):
        run_train(run_dir, JOB)
    assert (run_dir / "summary.json").read_text() == summary


def test_overwrite_true_replaces_the_previous_run(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run(), run_dir)
    run_train(run_dir, JOB + ["trainer.overwrite=true", "trainer.max_steps=2"])
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [1, 2]
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2


def test_changed_data_file_is_detected_and_resume_refuses(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(TOY_PATH.read_text().splitlines(keepends=True)[:80]))
    overrides = ["data=jsonl", f"data.path={data}", "data.max_prompt_length=null", *JOB, *SAVE_EVERY_3,
                 "trainer.max_steps=3"]
    run_dir = tmp_path / "run"
    run_train(run_dir, overrides)
    (run_dir / "summary.json").unlink()          # as if the job had died after its checkpoint
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[1:] + lines[:1]))  # same rows, another order: a different run
    with pytest.raises(POError, match=f"data file {data} has changed .*Restore the original data"):
        run_train(run_dir, overrides)
