"""`po-train` with faults injected from environment variables, for the subprocess fault tests.

Run: PO_FAULT_STEP_SLEEP=0.3 PO_FAULT_BLOCK_SAVE_AT=6 python tests/faults/fault_run.py hydra.run.dir=/tmp/x ...
- PO_FAULT_STEP_SLEEP: seconds to sleep after every micro-batch (gives a test time to signal a running job).
- PO_FAULT_BLOCK_SAVE_AT: step whose checkpoint write blocks after its files are written but before it is sealed
  and renamed; `RUN_DIR/BLOCKED` appears then, so a test can kill the process in the middle of a checkpoint write.
Neither changes the numbers a run computes.
"""

import os
import time
from pathlib import Path

import po.checkpoints
import po.trainer
from po.cli import main

SLEEP = float(os.environ.get("PO_FAULT_STEP_SLEEP", "0"))
BLOCK_AT = int(os.environ.get("PO_FAULT_BLOCK_SAVE_AT", "-1"))

if SLEEP:
    _step = po.trainer.PreferenceTrainer.training_step

    def slow_training_step(self, *args, **kwargs):
        loss = _step(self, *args, **kwargs)
        time.sleep(SLEEP)
        return loss

    po.trainer.PreferenceTrainer.training_step = slow_training_step

if BLOCK_AT >= 0:
    _write = po.checkpoints.write_manifest

    def blocking_write_manifest(checkpoint, step, *args, **kwargs):
        if step == BLOCK_AT:
            (Path(checkpoint).parents[2] / "BLOCKED").write_text(str(checkpoint))
            time.sleep(3600)
        return _write(checkpoint, step, *args, **kwargs)

    po.checkpoints.write_manifest = blocking_write_manifest

if __name__ == "__main__":
    main()
