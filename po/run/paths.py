"""`RunPaths`: the name of every file a run directory holds, in one place.

Every module that reads or writes a run directory (the run's start and end, the trainer's reliability pieces
through `ReliabilitySettings`, the CLI, `po-report`) takes its paths from here, so a name is never spelled twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # written by every run
    @property
    def resolved_config(self) -> Path:
        return self.root / "resolved_config.yaml"      # the config with every interpolation resolved

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"             # one JSON object per logging step

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"              # written last: its presence means the run is finished

    @property
    def model(self) -> Path:
        return self.root / "model"                     # the final model and tokenizer (Hugging Face format)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"               # the Trainer's output_dir: checkpoint-N folders

    @property
    def hydra(self) -> Path:
        return self.root / ".hydra"                    # Hydra's config.yaml, hydra.yaml, overrides.yaml

    # run bookkeeping
    @property
    def lock(self) -> Path:
        return self.root / ".po-lock"                  # held (flock) by the one process that owns the run

    @property
    def run_id(self) -> Path:
        return self.root / "run_id"                    # random id of this run; every checkpoint manifest carries it

    @property
    def data_fingerprint(self) -> Path:
        return self.root / "data_fingerprint.json"     # what the data was at the first start (resume checks it)

    @property
    def preempted(self) -> Path:
        return self.root / "PREEMPTED"                 # a checkpoint was saved on a signal: requeue and resume

    @property
    def nonfinite_steps(self) -> Path:
        return self.root / "nonfinite_steps.jsonl"     # one line per step the NaN guard skipped

    # written when asked for
    @property
    def generations(self) -> Path:
        return self.root / "generations.jsonl"         # eval.generate=true: sampled held-out responses

    @property
    def judged_samples(self) -> Path:
        return self.root / "judged_samples.jsonl"      # a judge: every judged sample (both responses, scores, KL)

    @property
    def annotators(self) -> Path:
        return self.root / "annotators.json"           # annotator id -> index, with weighting.annotator_column

    @property
    def error(self) -> Path:
        return self.root / "error.txt"                 # why a sweep point failed (po-report lists it)

    def outputs(self) -> tuple[Path, ...]:
        """What a previous run in this directory left that a fresh start removes (`trainer.overwrite=true`, or a run
        that died before its first checkpoint). The lock file is never removed (see po.run.lock)."""
        return (self.checkpoints, self.metrics, self.summary, self.model, self.preempted, self.data_fingerprint,
                self.nonfinite_steps, self.run_id, self.generations, self.judged_samples, self.annotators,
                self.resolved_config, self.error)
