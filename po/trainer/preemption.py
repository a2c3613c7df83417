"""Preemption: SIGTERM or SIGUSR1 (Slurm's warning before a time limit) -> checkpoint at the next step end, exit 0.

The handler only sets a flag (nothing unsafe runs inside a signal handler). `PreemptionCallback` reads it at the
end of every optimizer step (agreeing across ranks), asks the Trainer to log, save and stop, and the trainer then
raises `TrainingPreempted`; `po.cli.train` turns that into exit code 0 after `RUN_DIR/PREEMPTED` is written. The next
start of the same command (`trainer.resume=auto`) resumes from that checkpoint and removes the marker.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from po.atomic import write_text_atomic

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingPreempted(Exception):
    """Training stopped on a signal after saving a checkpoint; not an error (the CLI exits 0)."""

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(f"received {signal_name}: saved {checkpoint} at step {step} and stopped; run the same "
                         "command again (trainer.resume=auto) to continue from there")


class SignalFlag:
    """Installs handlers for `SIGNALS` that record the signal's name; `restore()` puts the old handlers back."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False  # Python only lets the main thread install handlers
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (a no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


class PreemptionCallback(TrainerCallback):
    """At a step end after a signal: log, save a checkpoint and stop training (on every rank at the same step)."""

    def __init__(self, flag: SignalFlag, device: torch.device):
        self.flag, self.device = flag, device
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(self.flag.received is not None, self.device):
            self.flag.received = self.flag.received or "a signal on another rank"
            control.should_log = True   # close the logging window so the resumed run's averages line up
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


def write_marker(path: Path, signal_name: str, step: int) -> None:
    """The preemption marker (RUN_DIR/PREEMPTED): which signal stopped training at which step."""
    write_text_atomic(path, f"signal: {signal_name}\nstep: {step}\n")
