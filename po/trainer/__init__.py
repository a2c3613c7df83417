"""`PreferenceTrainer` (preference_trainer.py) on `transformers.Trainer`, and what it adds: the loss contract's
trainer side (loss_hooks.py), metrics (metrics.py), held-out evaluation (evaluation.py), atomic checkpoints
(checkpoints.py), the NaN guard (guard.py), preemption (preemption.py), and the mixin tying those three in
(reliable.py)."""
