"""`po-report` on damaged sweeps and full or read-only disks: unreadable runs are skipped and listed, outputs are
written whole or not at all, and a write that fails is one `po-report: error:` line naming the file.

The sweeps are written by hand (a run = `.hydra/overrides.yaml`, `summary.json`, `metrics.jsonl`): no training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import po.report.sweep as report
from po.cli.report import main as report_main
from tests.helpers.fs import fill, make_read_only, tmpfs
from tests.helpers.runs import REPO


def write_run(sweep: Path, loss: str, seed: int, accuracy: float) -> Path:
    run = sweep / f"loss={loss},seed={seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- loss={loss}\n- seed={seed}\n")
    summary = {"eval": {"eval_rewards/accuracies": accuracy, "eval_loss": 0.5},
               "final_train_metrics": {"loss": 0.4}, "config": {"loss": {"beta": 0.1}}, "seed": seed}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": round(0.7 - 0.1 * s, 4)}) + "\n"
                                               for s in range(1, 4)))
    return run


def good_sweep(sweep: Path) -> None:
    write_run(sweep, "dpo", 1, 0.75)
    write_run(sweep, "dpo", 2, 0.25)


DAMAGE = {
    "summary.json truncated": ("summary.json", b'{"eval": {"eval_rewards/accur', "summary.json is not valid JSON"),
    "summary.json not UTF-8": ("summary.json", b'{"eval": {}, "note": "caf\xe9"}', "summary.json is not UTF-8"),
    "summary.json a list": ("summary.json", b"[1, 2]", "summary.json holds a JSON list, not an object"),
    "metrics.jsonl not UTF-8": ("metrics.jsonl", b'{"step": 1, "loss": 0.5}\n\xff\xfe\n', "metrics.jsonl is not UTF-8"),
    "overrides.yaml corrupt": (".hydra/overrides.yaml", b"- loss=ipo\n- [unclosed\n", ".hydra/overrides.yaml is not valid YAML"),
    "overrides.yaml not UTF-8": (".hydra/overrides.yaml", b"- loss=ip\xf6\n", ".hydra/overrides.yaml is not UTF-8"),
    "overrides.yaml a mapping": (".hydra/overrides.yaml", b"loss: ipo\n", ".hydra/overrides.yaml holds a dict, not a list"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_run_with_an_unreadable_file_is_skipped_and_listed(tmp_path, capsys, damage):
    sweep = tmp_path / "sweep"
    good_sweep(sweep)
    bad = write_run(sweep, "ipo", 1, 0.9)
    name, content, reason = DAMAGE[damage]
    (bad / name).write_bytes(content)
    report_main([str(sweep)])
    text = (sweep / "report.md").read_text()
    assert "2 of 3 runs finished" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]  # after the header
    assert len(rows) == 1 and rows[0].startswith("| loss=dpo | dpo | 0.1 | 2 | **0.5 ± 0.35**")
    listed = text.split("## Runs that could not be read", 1)[1]
    assert f"- `{bad.name}` (unreadable): {reason}" in listed
    err = capsys.readouterr().err
    assert f"po-report: skipped {bad}: {reason}" in err and "Traceback" not in err


def test_permission_error_is_skipped_and_listed(tmp_path, capsys, monkeypatch):
    """Root reads any file, so the refusal is injected where the report reads the file."""
    sweep = tmp_path / "sweep"
    good_sweep(sweep)
    bad = write_run(sweep, "ipo", 1, 0.9)
    real = Path.open

    def refuse(path, *args, **kwargs):
        if path == bad / "summary.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    report_main([str(sweep)])
    text = (sweep / "report.md").read_text()
    assert f"- `{bad.name}` (unreadable): summary.json cannot be read (Permission denied)" in text
    assert "2 of 3 runs finished" in text


def test_non_object_lines_in_metrics_are_skipped(tmp_path):
    """A partial last line (killed writer) or a line that is not an object does not stop the curve."""
    sweep = tmp_path / "sweep"
    run = write_run(sweep, "dpo", 1, 0.5)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('[1, 2]\n"text"\n{"step": "x", "loss": 1}\n{"step": 9, "lo')
    [found] = report.find_runs(sweep)
    assert found.status == "ok" and found.curve() == [(1, 0.6), (2, 0.5), (3, 0.4)]


def _no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_while_plotting_is_one_error_line_and_leaves_the_old_outputs(tmp_path):
    with tmpfs(tmp_path / "small", size="512k") as small:
        sweep = small / "sweep"
        good_sweep(sweep)
        (sweep / "report.md").write_text("old report\n")
        fill(small, free_bytes=2048)
        proc = subprocess.run([sys.executable, "-m", "po.cli.report", str(sweep)], capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
        assert (sweep / "report.md").read_text() == "old report\n"
        assert not list(sweep.glob("*.png")) and _no_temporaries(sweep) == []
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"po-report: error: could not write {sweep}/training_curves.png: No space left")


def test_full_disk_while_writing_report_md_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "plot", lambda *args, **kwargs: [])
    monkeypatch.setattr(report, "markdown", lambda *args, **kwargs: "x" * (1 << 16))
    with tmpfs(tmp_path / "small", size="512k") as small:
        sweep = small / "sweep"
        good_sweep(sweep)
        (sweep / "report.md").write_text("old report\n")
        fill(small, free_bytes=2048)
        with pytest.raises(SystemExit) as stop:
            report_main([str(sweep)])
        assert (sweep / "report.md").read_text() == "old report\n" and _no_temporaries(sweep) == []
    assert str(stop.value).startswith(f"po-report: error: could not write {sweep / 'report.md'}: No space left")
    assert "\n" not in str(stop.value)


def test_read_only_sweep_can_be_reported_elsewhere(tmp_path):
    """A sweep on a read-only mount: one line naming the file, and --out writes the report to another folder."""
    with tmpfs(tmp_path / "ro") as ro:
        sweep = ro / "sweep"
        good_sweep(sweep)
        make_read_only(ro)
        with pytest.raises(SystemExit) as stop:
            report_main([str(sweep)])
        assert "Read-only file system" in str(stop.value) and str(sweep) in str(stop.value)
        report_main([str(sweep), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "2 of 2 runs finished" in text and (tmp_path / "out" / "training_curves.png").stat().st_size > 1000
