"""Multi-process launch: one run directory for all ranks, rank-0-only writes, and DeepSpeed on CPU machines.

`torchrun`, the `deepspeed` launcher and `accelerate launch` all start one process per rank and set `RANK`,
`WORLD_SIZE`, `LOCAL_RANK`. Every rank composes the Hydra config itself, so a timestamped run directory would
differ between ranks: under a multi-process launch `hydra.run.dir` must be pinned on the command line.

On a machine without CUDA, `accelerate` never starts DeepSpeed (it sees no GPU backend), so `deepspeed_cpu_state`
starts the process group itself (DeepSpeed's CPU accelerator, gloo) and tells `TrainingArguments` to use it.

Decisions that touch the file system are taken by global rank 0 alone and sent to the others (`run_on_main`): the
run directory's lock and what a start does with it, and the temporary folder the final model is written into
(`staged_dir_for_all_ranks`), so ranks never act on a file system another rank is changing. Shared caches are
filled the same way (`main_first`): rank 0 fills them, the others then read them, so a cache is filled once per
job, not once per rank or per node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from omegaconf import DictConfig

from po.atomic import staged_dir
from po.errors import ConfigError, POError

T = TypeVar("T")


def world_size() -> int:
    """Processes in this launch, from the launcher's environment (1 when started directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on global rank 0 (or when not launched as several processes); usable before any process group."""
    return int(os.environ.get("RANK", "0")) == 0


def require_pinned_run_dir(argv: Sequence[str]) -> None:
    """Under a multi-process launch, refuse a run directory that each rank would derive from its own clock."""
    if world_size() <= 1 or {"-m", "--multirun"} & set(argv):
        return
    if not any(a.startswith(("hydra.run.dir=", "+hydra.run.dir=", "++hydra.run.dir=")) for a in argv):
        raise ConfigError(f"this is a {world_size()}-process launch: pin the run directory so every rank writes to "
                          "the same place, e.g. hydra.run.dir=runs/my-run")


class _DropCpuFallbackNotice(logging.Filter):
    """DeepSpeed's "Setting accelerator to CPU ... we were unable to detect it" warning, and only that one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


def quiet_unused_deepspeed(uses_deepspeed: bool) -> None:
    """Silence DeepSpeed's accelerator notice on runs that do not use DeepSpeed.

    accelerate imports DeepSpeed (when installed) whenever it unwraps a model, and DeepSpeed then warns on a machine
    without CUDA that it picked its CPU accelerator: not the user's concern unless the run uses DeepSpeed. The filter
    sits on DeepSpeed's logger before DeepSpeed creates it (it keeps the same logger object), so it holds whenever
    DeepSpeed is imported later. Idempotent; a DeepSpeed run keeps the notice.
    """
    logger = logging.getLogger("DeepSpeed")
    present = [f for f in logger.filters if isinstance(f, _DropCpuFallbackNotice)]
    if uses_deepspeed:
        for f in present:
            logger.removeFilter(f)
    elif not present:
        logger.addFilter(_DropCpuFallbackNotice())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_cpu_state(deepspeed_cfg: DictConfig, ddp_backend: str | None) -> dict[str, Any]:
    """TrainingArguments kwargs for a DeepSpeed run on CPU (DS_ACCELERATOR=cpu, gloo); {} otherwise.

    accelerate only starts DeepSpeed's process group on a GPU backend, so here it is started with gloo in an
    accelerate `PartialState` marked as DeepSpeed, which `TrainingArguments` then reuses (`use_configured_state`).
    A single process started without a launcher gets the environment DeepSpeed needs (else it looks for MPI).
    """
    import torch

    if not deepspeed_cfg.get("config") or torch.cuda.is_available():
        return {}
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend=ddp_backend or "gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"accelerator_config": {"use_configured_state": True}}


def _process_group_size() -> int:
    """Ranks in the started process group (1 without one). A multi-process launch must have started it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if world_size() > 1:
        raise RuntimeError("a multi-process launch without a torch.distributed process group: build the "
                           "TrainingArguments (po.run.job.training_arguments) first; it starts the group")
    return 1


def share_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (a pickled broadcast; other ranks pass anything, e.g. None)."""
    if _process_group_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks_ok(ok: bool) -> bool:
    """True on every rank when `ok` is true on every rank."""
    if _process_group_size() == 1:
        return ok
    import torch.distributed as dist

    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, ok)
    return all(flags)


def run_on_main(fn: Callable[[], T]) -> T:
    """Call `fn` on global rank 0 only; every rank returns its result, or raises its error.

    The other ranks wait in a broadcast (bounded by the process group's timeout), so a refusal on rank 0 ends every
    rank with the same one-line error instead of leaving them waiting at the next collective.
    """
    if _process_group_size() == 1:
        return fn()
    outcome: tuple[str, Any, bool] | None = None
    error: Exception | None = None
    if is_main_process():
        try:
            outcome = ("ok", fn(), False)
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here unchanged
            error = exc
            outcome = ("error", str(exc), isinstance(exc, POError))
    outcome = share_from_main(outcome)
    if outcome[0] == "ok":
        return outcome[1]
    if error is not None:
        raise error
    if outcome[2]:
        raise POError(outcome[1])
    raise RuntimeError(f"rank 0 failed: {outcome[1]}")


def main_first(fn: Callable[[], T]) -> T:
    """Call `fn` on global rank 0, then on every other rank once rank 0 has returned; each rank gets its own result.

    For work that fills a shared cache (tokenized data, reference log-probs): rank 0 fills it while the others wait
    (bounded by the process group's timeout, `trainer.ddp_timeout`), then they read what rank 0 stored instead of
    computing it again, on this node or any other that sees the same file system. When rank 0 fails, every rank
    raises its error (as `run_on_main`) instead of repeating the failing work.
    """
    if _process_group_size() == 1:
        return fn()
    mine: list[T] = []
    run_on_main(lambda: mine.append(fn()))  # rank 0 only; the others wait in its broadcast
    return mine[0] if mine else fn()


@contextlib.contextmanager
def staged_dir_for_all_ranks(final: str | os.PathLike) -> Iterator[Path]:
    """`po.atomic.staged_dir(final)` owned by rank 0, with its temporary path given to every rank.

    Every rank may write into it (a ZeRO-3 save gathers on all ranks; DeepSpeed checkpoints are written by each).
    The ranks then agree that all writes succeeded before rank 0 renames it into place; when any rank failed, every
    rank raises (the failing one its own one-line error) and the temporary folder is removed.
    """
    if _process_group_size() == 1:
        with staged_dir(final) as staged:
            yield staged
        return
    with staged_dir(final) if is_main_process() else contextlib.nullcontext() as mine:
        staged = Path(share_from_main(str(mine) if mine is not None else None))
        error: BaseException | None = None
        try:
            yield staged
        except BaseException as exc:  # noqa: BLE001 - every rank must learn about it before anyone goes on
            error = exc
        if not all_ranks_ok(error is None):
            if error is not None:
                raise error
            raise POError(f"could not write {final}: another rank failed while writing it (see its error)")
