"""`po-report SWEEP_DIR` (= `python -m po.cli.report`): one table and a few plots for a sweep (po/report/).

Run: po-report multirun/2026-11-22/10-00-00 [--metric eval_rewards/accuracies] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from po.errors import POError
from po.report.sweep import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="po-report", description="one table and a few plots for a sweep, from the runs' own files")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="eval_rewards/accuracies", help="metric plotted against beta")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and the plots (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"po-report: error: {args.sweep_dir} is not a folder")
    try:
        path = write_report(args.sweep_dir, args.metric, args.out)
    except POError as exc:
        raise SystemExit(f"po-report: error: {exc}") from None
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
