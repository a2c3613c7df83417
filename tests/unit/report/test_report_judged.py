"""po-report's judged section from hand-made run folders: pooled win rates, the best-configuration line (separated
or not by the paired bootstrap), and the fallback to summaries when the judged samples are missing."""

import json
from pathlib import Path

from po.report.judged import best_line, judged_groups, judged_section
from po.report.runs import find_runs


def make_run(root: Path, name: str, prefs: list[float], with_samples: bool = True) -> None:
    run = root / name
    run.mkdir(parents=True)
    win = sum(prefs) / len(prefs)
    (run / "summary.json").write_text(json.dumps({"eval": {"eval_judge/win_rate": win, "eval_judge/kl": 1.0},
                                                  "config": {"loss": {"beta": 0.1}}}))
    if with_samples:
        rows = [{"step": 10, "prompt_index": i, "sample": 0, "prompt": f"p{i}", "preference": p, "policy_length": 5,
                 "start_length": 5, "kl_estimate": 1.0} for i, p in enumerate(prefs)]
        (run / "judged_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_best_configuration_is_separated_only_when_the_paired_difference_is_clear(tmp_path):
    make_run(tmp_path / "a", "loss=dpo", [1.0] * 30)
    make_run(tmp_path / "a", "loss=ipo", [0.0] * 30)
    groups = judged_groups(find_runs(tmp_path / "a"), samples=200)
    assert groups["loss=dpo"].figures["win_rate"] == (1.0, 1.0, 1.0)
    line = best_line(groups, samples=200)
    assert "`loss=dpo`" in line and "; separated from the runner-up `loss=ipo`" in line and "+1.000" in line
    make_run(tmp_path / "b", "loss=dpo", [1.0, 0.0] * 15)
    make_run(tmp_path / "b", "loss=ipo", [0.0, 1.0] * 14 + [0.0, 0.0])
    line = best_line(judged_groups(find_runs(tmp_path / "b"), samples=200), samples=200)
    assert "`loss=dpo`" in line and "not separated from the runner-up" in line


def test_runs_without_judged_samples_show_the_summary_mean_without_interval(tmp_path):
    make_run(tmp_path, "loss=dpo", [1.0, 0.0, 1.0, 1.0], with_samples=False)
    groups = judged_groups(find_runs(tmp_path))
    assert groups["loss=dpo"].figures["win_rate"] == (0.75, None, None)
    table = "\n".join(judged_section(groups))
    assert "| loss=dpo | dpo | 0.1 | 1 | 0.750 | – | 1.000 |" in table
    assert "only judged configuration" in best_line(groups)
