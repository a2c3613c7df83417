"""`po-train` with faults injected from environment variables, for the subprocess fault tests.

Run: PO_FAULT_STEP_SLEEP=0.3 PO_FAULT_BLOCK_SAVE_AT=6 python tests/helpers/fault_run.py hydra.run.dir=/tmp/x ...
- PO_FAULT_STEP_SLEEP: seconds to sleep after every micro-batch (gives a test time to signal a running job).
- PO_FAULT_BLOCK_SAVE_AT: step whose checkpoint write blocks after its files are written but before it is sealed
  and renamed; `RUN_DIR/BLOCKED` appears then, so a test can kill the process in the middle of a checkpoint write.
- PO_FAULT_PAUSE_AT + PO_FAULT_PAUSE_FILE: pause at one point of the end of a run; the file appears then, and the
  run goes on when a test deletes it (or the test kills the process there). Points:
  `step:N`  at the start of optimizer step N (1-based), in the middle of training;
  `end`     after training and the final evaluation, before the final model is written;
  `export`  inside the final model write: every file is in its temporary folder, not yet renamed to model/;
  `summary` inside summary.json's write: the temporary file is written, not yet renamed.
- PO_FAULT_SIGNAL_AT: optimizer step (1-based) during which the process sends itself SIGUSR1 (a preemption that
  lands at a known step, e.g. the last one).
None of them changes the numbers a run computes.
"""

import os
import signal
import time
from pathlib import Path

import po.atomic
import po.run.job
import po.trainer.checkpoints
import po.trainer.preference_trainer
from po.cli.train import main

SLEEP = float(os.environ.get("PO_FAULT_STEP_SLEEP", "0"))
BLOCK_AT = int(os.environ.get("PO_FAULT_BLOCK_SAVE_AT", "-1"))
PAUSE_AT = os.environ.get("PO_FAULT_PAUSE_AT")
PAUSE_FILE = Path(os.environ.get("PO_FAULT_PAUSE_FILE", "/nonexistent"))
SIGNAL_AT = int(os.environ.get("PO_FAULT_SIGNAL_AT", "-1"))


def pause(where: str) -> None:
    PAUSE_FILE.write_text(where)
    while PAUSE_FILE.exists():
        time.sleep(0.05)


if SLEEP or SIGNAL_AT > 0 or (PAUSE_AT or "").startswith("step:"):
    _step = po.trainer.preference_trainer.PreferenceTrainer.training_step

    def faulty_training_step(self, *args, **kwargs):
        if PAUSE_AT == f"step:{self.state.global_step + 1}" and not PAUSE_FILE.exists():
            pause(PAUSE_AT)
        if self.state.global_step + 1 == SIGNAL_AT:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled at the end of this optimizer step
        loss = _step(self, *args, **kwargs)
        time.sleep(SLEEP)
        return loss

    po.trainer.preference_trainer.PreferenceTrainer.training_step = faulty_training_step

if BLOCK_AT >= 0:
    _write = po.trainer.checkpoints.write_manifest

    def blocking_write_manifest(checkpoint, step, *args, **kwargs):
        if step == BLOCK_AT:
            (Path(checkpoint).parents[2] / "BLOCKED").write_text(str(checkpoint))
            time.sleep(3600)
        return _write(checkpoint, step, *args, **kwargs)

    po.trainer.checkpoints.write_manifest = blocking_write_manifest

if PAUSE_AT == "end":
    _export = po.run.job.export_model

    def paused_export(*args, **kwargs):
        pause("end")
        return _export(*args, **kwargs)

    po.run.job.export_model = paused_export

if PAUSE_AT == "export":
    _replace_dir = po.atomic.replace_dir

    def paused_replace_dir(staged, final):
        if Path(final).name == "model":
            pause("export")
        return _replace_dir(staged, final)

    po.atomic.replace_dir = paused_replace_dir

if PAUSE_AT == "summary":
    _write_atomic = po.atomic.write_atomic

    def paused_write_atomic(path, write):
        if Path(path).name != "summary.json":
            return _write_atomic(path, write)

        def write_then_pause(fh):
            write(fh)
            fh.flush()
            pause("summary")

        return _write_atomic(path, write_then_pause)

    po.atomic.write_atomic = paused_write_atomic

if __name__ == "__main__":
    main()
