"""Run directories are never overwritten by accident, a finished run is never touched, and resume refuses data that
changed since the run began (every source: files, folders, mixture entries, hub revisions)."""

import json
import shutil

import pytest

from po.data.toy import TOY_PATH
from po.errors import ConfigError, POError
from po.run.paths import RunPaths
from po.run.rundir import check_fingerprint, data_sources_fingerprint
from tests.helpers.faults import (JOB, SAVE_EVERY_3, assert_one_line_error, crashed_copy, finished_run, reference_run,
                                  run, tree)
from tests.helpers.runs import compose_cfg, read_metrics, run_train

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


def test_finished_run_is_byte_identical_after_any_later_start(tmp_path):
    """The same command again, another loss, and trainer.resume=PATH into a finished run: each refused in one line,
    through the real CLI (Hydra's own .hydra/ files and job log included), and every file stays byte-identical."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run(), run_dir)
    before = tree(run_dir)
    assert ".hydra/overrides.yaml" in before and "cli.log" in before
    for extra in ([], ["loss=ipo"], [f"trainer.resume={run_dir / 'checkpoints' / 'checkpoint-12'}"]):
        rc, out = run(run_dir, SAVE_EVERY_3 + extra)
        assert_one_line_error(rc, out, f"run directory {run_dir}", "already holds a run (summary.json): it holds a finished run",
                              "trainer.overwrite=true")
        assert tree(run_dir) == before, f"{extra} changed the finished run"


def test_changed_mixture_source_is_detected_and_resume_refuses(tmp_path):
    """Every data.mixture entry is part of the fingerprint, not only data.path."""
    lines = TOY_PATH.read_text().splitlines(keepends=True)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(lines[:60]))
    second.write_text("".join(lines[60:120]))
    overrides = ["data=mixture", f"data.mixture=[{{path: {first}, weight: 1}}, {{path: {second}, weight: 1}}]",
                 "data.max_prompt_length=null", *JOB, *SAVE_EVERY_3, "trainer.max_steps=3"]
    run_dir = tmp_path / "run"
    run_train(run_dir, overrides)
    stored = json.loads((run_dir / "data_fingerprint.json").read_text())
    assert {str(first.resolve()), str(second.resolve())} <= set(stored["files"])
    (run_dir / "summary.json").unlink()          # as if the job had died after its checkpoint
    second.write_text("".join(lines[61:120] + lines[60:61]))  # same rows, another order
    with pytest.raises(POError, match=f"data file {second} has changed .*Restore the original data"):
        run_train(run_dir, overrides + ["trainer.max_steps=6"])


def test_hub_datasets_are_fingerprinted_by_their_cached_revision(tmp_path, monkeypatch):
    """A hub dataset id is recorded with the commit of its local snapshot (no network); a dataset that is not in
    the cache is recorded as unresolved, not silently by name only; another revision at resume is refused."""
    from omegaconf import OmegaConf

    hub = tmp_path / "hub"
    repo = hub / "datasets--org--prefs"
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "train.jsonl").write_text("{}\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    cfg = compose_cfg(["data.path=org/prefs", "data.eval_path=org/not-downloaded"]).data
    fingerprint = data_sources_fingerprint(cfg)
    assert fingerprint["hub"]["org/prefs"] == "a" * 40
    assert fingerprint["hub"]["org/not-downloaded"].startswith("unresolved: no snapshot in the local")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "data_fingerprint.json").write_text(json.dumps(fingerprint))
    check_fingerprint(RunPaths(run_dir), cfg)  # unchanged: accepted
    (repo / "refs" / "main").write_text("b" * 40)
    with pytest.raises(POError, match=f"dataset org/prefs is now at revision {'b' * 40} .* started on revision"):
        check_fingerprint(RunPaths(run_dir), OmegaConf.create(OmegaConf.to_container(cfg)))


def test_checkpoint_past_max_steps_is_refused(tmp_path):
    """A checkpoint beyond trainer.max_steps would give a model trained for more steps than asked."""
    run_dir = crashed_copy(tmp_path / "run")
    with pytest.raises(ConfigError, match="checkpoint-12 is at step 12, past trainer.max_steps=9"):
        run_train(run_dir, JOB + SAVE_EVERY_3 + ["trainer.max_steps=9"])
    assert not (run_dir / "summary.json").exists()
