"""A local sweep leaves one directory per run, and `po-report` turns it into a table and plots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from po.report.runs import find_runs
from po.report.sweep import write_report

pytestmark = pytest.mark.slow
FAST = ["trainer.max_steps=8", "trainer.logging_steps=4", "trainer.disable_tqdm=true", "eval.before_training=false"]


def multirun(sweep_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["po-train", "-m", *overrides, *FAST, f"hydra.sweep.dir={sweep_dir}"],
                          capture_output=True, text=True, timeout=900, cwd=sweep_dir.parent,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "s"
    proc = multirun(sweep_dir, ["loss=dpo,ipo", "seed=1,2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


def test_every_run_has_its_own_named_directory(sweep):
    runs = find_runs(sweep)
    assert len(runs) == 4 and all(r.status == "ok" for r in runs)
    names = {r.path.name.split(",trainer")[0] for r in runs}
    assert {"loss=dpo,seed=1", "loss=dpo,seed=2", "loss=ipo,seed=1", "loss=ipo,seed=2"} <= {
        ",".join(o for o in n.split(",") if o.startswith(("loss=", "seed="))) for n in names}
    for r in runs:
        s = r.summary
        assert s["seed"] in (1, 2) and s["world_size"] == 1 and s["git_commit"] and "torch" in s["versions"]
        assert s["config"]["seed"] == s["seed"]


def test_report_table_matches_summaries(sweep):
    report = write_report(sweep).read_text()
    rows = [line for line in report.splitlines() if line.startswith("| loss=")]
    assert len(rows) == 2, report
    header = next(line for line in report.splitlines() if line.startswith("| configuration"))
    col = [c.strip() for c in header.strip("|").split("|")].index("eval_rewards/accuracies")
    for loss in ("dpo", "ipo"):
        values = [json.loads((r.path / "summary.json").read_text())["eval"]["eval_rewards/accuracies"]
                  for r in find_runs(sweep) if f"loss={loss}" in r.overrides]
        expected = sum(values) / len(values)
        row = next(r for r in rows if r.startswith(f"| loss={loss},"))
        cell = [c.strip() for c in row.strip("|").split("|")][col].strip("*")
        assert float(cell.split(" ± ")[0]) == pytest.approx(expected, rel=1e-3, abs=1e-4)
    for png in ("training_curves.png", "metric_vs_beta.png"):
        assert (sweep / png).stat().st_size > 1000


def test_failed_run_is_named_and_report_still_written(tmp_path):
    sweep_dir = tmp_path / "s"
    proc = multirun(sweep_dir, ["loss.beta=0.1,-1"])
    assert proc.returncode != 0  # Hydra reports the failed job after running every job
    report = subprocess.run([sys.executable, "-m", "po.cli.report", str(sweep_dir)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    text = (sweep_dir / "report.md").read_text()
    assert "1 of 2 runs finished" in text
    assert "loss.beta=-1" in text and "(failed)" in text and "loss.beta must be > 0" in text


def test_generation_eval_writes_lengths_and_kl(tmp_path):
    from tests.helpers.runs import run_train

    summary = run_train(tmp_path / "run", ["trainer.max_steps=5", "eval.generate=true", "eval.num_prompts=4",
                                           "eval.max_new_tokens=12"])
    lines = [json.loads(x) for x in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    for rec in lines:
        assert 1 <= rec["length"] <= 12
        assert rec["kl_estimate"] == pytest.approx(rec["logp_policy"] - rec["logp_reference"], abs=1e-4)
    ev = summary["eval"]
    assert ev["eval_gen/num_prompts"] == 4
    assert ev["eval_gen/length_mean"] == pytest.approx(sum(r["length"] for r in lines) / 4)
    assert ev["eval_gen/kl_to_reference"] == pytest.approx(sum(r["kl_estimate"] for r in lines) / 4, abs=1e-4)
