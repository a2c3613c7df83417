"""Preference data, in the order it flows: rows from files or the hub (sources.py) -> pairs (formats.py, pairs.py,
options.py) -> token ids (tokenize.py) -> cached datasets per source (prepare.py, cache.py) -> train and held-out
splits with a report of what was dropped (load.py, quality.py) -> batches (collate.py). toy.py makes the shipped
toy set."""
