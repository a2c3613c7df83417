"""Judged evaluation: judges (judges.py), sampling from the policy and the starting model (sampling.py), win rates
with intervals (stats.py), and the starting model's cached samples and scores (cache.py). po.run.judged runs it."""
