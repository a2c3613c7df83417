"""`po-report` shows the ranking metrics of runs on ranked lists (eval_rank/ndcg, eval_rank/kendall_tau).

Run: `python -m pytest tests/unit/report/test_report_ranking.py -q`.
"""

from __future__ import annotations

import json
from pathlib import Path

import po.report.sweep as report
from tests.unit.report.test_report_io import write_run


def test_report_table_has_ranking_columns(tmp_path):
    sweep = tmp_path / "sweep"
    for loss, seed, ndcg in (("pl_dpo", 1, 0.9), ("pl_dpo", 2, 0.7), ("dpo", 1, 0.6)):
        run = write_run(sweep, loss, seed, 0.5)
        summary = json.loads((run / "summary.json").read_text())
        summary["eval"].update({"eval_rank/ndcg": ndcg, "eval_rank/kendall_tau": ndcg - 0.5})
        (run / "summary.json").write_text(json.dumps(summary))
    text = Path(report.write_report(sweep)).read_text()
    header = next(line for line in text.splitlines() if "eval_rank/ndcg" in line)
    assert "eval_rank/kendall_tau" in header
    row = next(line for line in text.splitlines() if line.startswith("|") and "pl_dpo" in line)
    assert "0.8" in row  # mean NDCG over the two seeds
