"""One micro-batch -> `PairBatch` (losses/base.py): log-probs from hidden states in chunks (logprobs.py), the plain
and packed row layouts (layouts.py), token KL (token_kl.py), hidden-state and activation extras (extras.py), the
reference sources (reference.py), and the step itself (pair_batch.py)."""
