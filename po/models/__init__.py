"""The models of a run, from the `model` and `peft` groups: tokenizer (tokenizer.py), policy and frozen reference
copy (policy.py), PEFT wrapping (peft.py), DeepSpeed ZeRO helpers (zero.py)."""
