"""One process per run directory, and a finished run is never touched: the checks a start makes before it writes.

Why: two `po-train` processes in one `hydra.run.dir` would both train, log every step twice and race on `model/`;
a later command (the same one, or another loss) would resume a finished run and rewrite its results.

- A finished run (RUN_DIR/summary.json, written last by a run) refuses every start unless `trainer.overwrite=true`
  (`refuse_finished`). Every rank checks this before anything is written, so the refused directory stays
  byte-identical: po also writes Hydra's `.hydra/` files and the job log itself, after this point (`po.run.jobfiles`).
- The lock: `RUN_DIR/.po-lock`, taken with `fcntl.flock(LOCK_EX | LOCK_NB)` and held by the open file for the whole
  run. The OS releases it when the process ends, however it ends (kill -9 included), so a killed run never blocks
  its own resume. A second start fails at once with one line naming the holder's pid and host, which the holder
  writes into the file after it took the lock. The file is never deleted (deleting lock files lets two processes
  lock two different files).

Multi-process launches (torchrun, the deepspeed launcher, submitit tasks): only global rank 0 takes the lock, and it
does so after the process group exists. Rank 0 takes the lock and decides what the start does (`claim_run_dir`),
then broadcasts the decision, or its error, to every rank (`po.run.distributed.run_on_main`). The other ranks wait in
that broadcast, never on the file system, so they neither deadlock nor hang: when rank 0 refuses, each rank raises
the same one-line error and exits. Ranks never take the lock themselves, so no rank can hold it against another.

File systems without `flock` (Lustre mounted without `-o flock`) get a warning and no lock. On NFS, Linux maps
`flock` to NFS byte-range locks, which work across nodes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from po.errors import ConfigError
from po.run.distributed import is_main_process, run_on_main
from po.run.paths import RunPaths

log = logging.getLogger(__name__)

T = TypeVar("T")


class RunDirRefused(ConfigError):
    """This start may not use the run directory (a finished run, or one a live process owns); nothing was written."""


def refuse_finished(run_dir: Path, overwrite: bool) -> None:
    """Raise `RunDirRefused` when `run_dir` holds a finished run and `trainer.overwrite` is not true."""
    summary = RunPaths(run_dir).summary
    if not overwrite and summary.is_file():
        raise RunDirRefused(
            f"run directory {run_dir} already holds a run ({summary.name}): it holds a finished run that a later start "
            "never changes; choose a new hydra.run.dir, or replace it with trainer.overwrite=true")


class RunLock:
    """The exclusive lock of one run directory, held while this object's file stays open."""

    def __init__(self, run_dir: Path):
        self.path = RunPaths(run_dir).lock
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise `RunDirRefused` naming its holder. Creates the lock file, writes nothing in it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RunDirRefused(
                f"run directory {self.path.parent} is in use by another po-train process "
                f"({holder or 'its pid is not recorded yet'}; lock file {self.path}); wait for it to end or stop it, "
                "or choose another hydra.run.dir") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            log.warning("cannot lock %s (%s): this file system has no file locks, so nothing stops a second "
                        "po-train from using the same run directory", self.path, exc.strerror)
        self._fd = fd
        return self

    def record_holder(self) -> None:
        """Write this process's pid and host into the lock file, for the message a second start prints."""
        if self._fd is None:
            return
        text = f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, overwrite: bool, decide: Callable[[], T]) -> Iterator[T]:
    """Hold `run_dir` for the duration of the block; yield what `decide()` returned on global rank 0.

    Rank 0: take the lock, re-check that the run is not finished (it may have finished since the first check),
    record itself as the holder, then call `decide()` (po.run.rundir.prepare_run_dir). Every rank receives the result,
    or raises rank 0's error. The lock is released when the block ends (on rank 0; other ranks hold nothing).
    """
    lock = RunLock(run_dir)

    def take_and_decide() -> T:
        lock.acquire()
        try:
            refuse_finished(run_dir, overwrite)
            lock.record_holder()
            return decide()
        except BaseException:
            lock.release()
            raise

    decision = run_on_main(take_and_decide)
    try:
        yield decision
    finally:
        if is_main_process():
            lock.release()
