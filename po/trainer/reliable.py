"""`ReliableTrainerMixin`: atomic checkpoints, the NaN/inf guard and preemption, around `transformers.Trainer`.

`PreferenceTrainer` lists it before `Trainer`. It overrides as little as it can: `train` (install the signal
handlers and the two callbacks, raise `TrainingPreempted` / `NonFiniteSteps` afterwards), `training_step` (hand the
loss and row ids to the guard), `_save_checkpoint` (write into `checkpoints/.staging/`, seal with a manifest that
carries the run id, rename into place, then rotate; a failed write is one line and leaves nothing partial),
`_get_output_dir` (points at the staging folder while a checkpoint is written) and `_run_epoch` (runs no step once
`max_steps` is reached: the Trainer would otherwise train one step past a checkpoint taken at `max_steps`).
Settings come from po's trainer keys, passed by `po.run.job` as `reliability=ReliabilitySettings(...)`.
"""

from __future__ import annotations

import errno
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers.trainer_utils import rotate_checkpoints

from losses.base import PreferenceLoss
from po.atomic import io_failure
from po.errors import POError
from po.trainer import checkpoints
from po.trainer.guard import NonFiniteGuard, NonFiniteSteps
from po.trainer.preemption import PreemptionCallback, SignalFlag, TrainingPreempted, write_marker

log = logging.getLogger(__name__)


class CheckpointWriteError(POError):
    """A checkpoint could not be written (disk full, quota, permissions); the previous one is intact."""


@dataclass
class ReliabilitySettings:
    max_bad_steps: int = 10            # consecutive non-finite steps before the run stops
    checkpoint_checksums: bool = True  # sha256 of every checkpoint file in its manifest, checked at resume
    run_id: str | None = None          # written into every checkpoint's manifest (po.run.rundir: which run wrote it)
    nonfinite_report: Path | None = None   # one JSON line per skipped step (RunPaths.nonfinite_steps)
    preempted_marker: Path | None = None   # written when a signal stopped training (RunPaths.preempted)


class ReliableTrainerMixin:
    reliability: ReliabilitySettings = ReliabilitySettings()
    loss_module: PreferenceLoss | None = None   # its parameters and state are guarded with the model's
    _po_staging: Path | None = None
    _po_guard: NonFiniteGuard | None = None

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        flag = SignalFlag()
        report = self.reliability.nonfinite_report if self.args.should_save else None
        guard = NonFiniteGuard(self.model, self.loss_module, self.reliability.max_bad_steps,
                               self.args.device, report)
        if resume_from_checkpoint:
            guard.load_state((checkpoints.read_manifest(Path(resume_from_checkpoint)) or {}).get("nonfinite"))
        preemption = PreemptionCallback(flag, self.args.device)
        self.add_callback(guard)
        self.add_callback(preemption)
        self._po_guard = guard
        flag.install()
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            flag.restore()
            self.remove_callback(guard)
            self.remove_callback(preemption)
            self._po_guard = None
        step = self.state.global_step
        newest = str(Path(self.args.output_dir) / f"checkpoint-{step}")
        if guard.tripped:
            raise NonFiniteSteps(
                f"stopped at step {step}: {guard.consecutive} steps in a row had a non-finite loss or gradient "
                f"norm (trainer.max_bad_steps={self.reliability.max_bad_steps}); last batch rows: {guard.last_rows}. "
                f"The last good state is saved in {newest}; every skipped step is listed in {self.reliability.nonfinite_report}. "
                "Check those rows and lower trainer.learning_rate, then resume with trainer.resume=auto")
        if preemption.stopped_at is not None:
            if self.args.should_save and self.reliability.preempted_marker is not None:
                write_marker(self.reliability.preempted_marker, flag.received or "?", step)
            raise TrainingPreempted(flag.received or "?", step, newest)
        return output

    def training_step(self, model, inputs, num_items_in_batch=None):
        row_ids = inputs.get("row_ids") if isinstance(inputs, dict) else None
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._po_guard is not None:
            self._po_guard.note_micro_batch(loss, row_ids)
        return loss

    def log(self, logs, *args, **kwargs):
        if self._po_guard is not None and self._po_guard.total and "loss" in logs:
            logs["nonfinite_steps"] = self._po_guard.total
        return super().log(logs, *args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        if self._po_staging is not None:
            return str(self._po_staging)
        return super()._get_output_dir(trial)

    def _run_epoch(self, *args, **kwargs):
        """No step at or past `max_steps`: a run resumed from its checkpoint at `max_steps` goes straight to the end
        (the Trainer's loop would train one more step before it checks)."""
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written under `.staging/`, sealed with a manifest, renamed, then rotated."""
        parent = Path(super()._get_output_dir(trial))
        step = self.state.global_step
        staging = checkpoints.staging_dir(parent)
        staged, final = staging / f"checkpoint-{step}", parent / f"checkpoint-{step}"
        try:
            if self.args.should_save:
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir(parents=True, exist_ok=True)
            self.accelerator.wait_for_everyone()
            self._po_staging = staging
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._po_staging = None
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                best = self.state.best_model_checkpoint
                if best and Path(best) == staged:
                    self.state.best_model_checkpoint = str(final)
                    self.state.save_to_json(str(staged / "trainer_state.json"))
                extra = {"nonfinite": self._po_guard.state()} if self._po_guard is not None else {}
                if self.reliability.run_id is not None:
                    extra["run_id"] = self.reliability.run_id
                checkpoints.write_manifest(staged, step, self.reliability.checkpoint_checksums, extra)
                checkpoints.commit(staged, final)
                rotate_checkpoints(output_dir=str(parent), save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        except Exception as exc:
            failure = io_failure(final, exc)
            if failure is None:
                raise
            shutil.rmtree(staged, ignore_errors=True)  # give the space back; the incomplete copy is useless
            if staging.is_dir() and not any(staging.iterdir()):
                staging.rmdir()
            previous, _ = checkpoints.newest_complete(parent)
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            hint = ("free space on that file system" if failure.errno in (errno.ENOSPC, errno.EDQUOT)
                    else "make it writable")
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} to {final}: {failure.reason}; {kept}. "
                f"{hint.capitalize()}, then run the same command again (trainer.resume=auto)") from exc
        self.accelerator.wait_for_everyone()
