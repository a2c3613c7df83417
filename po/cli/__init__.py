"""The four commands: `po-train` (train.py, also `python -m po.cli`), `po-data` (data.py), `po-cache-ref`
(cache_ref.py) and `po-report` (report.py). Each parses its arguments and calls `po.run` or `po.report`."""
