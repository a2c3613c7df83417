"""Test helpers, imported by the tests as `tests.helpers.<module>` (never from conftest.py): runs.py (compose the
real config, train tiny jobs), data.py (small data files), fs.py (small or read-only file systems), faults.py and
fault_run.py (po-train in a subprocess with injected faults), slurm.py (a real one-node Slurm)."""
