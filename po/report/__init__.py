"""`po-report`'s work: the runs of a sweep folder (runs.py), the table (table.py), the plots (plots.py), and the
report written from them (sweep.py)."""
