"""Multi-process launch: one run directory for all ranks, rank-0-only writes, and DeepSpeed on CPU machines.

`torchrun`, the `deepspeed` launcher and `accelerate launch` all start one process per rank and set `RANK`,
`WORLD_SIZE`, `LOCAL_RANK`. Every rank composes the Hydra config itself, so a timestamped run directory would
differ between ranks: under a multi-process launch `hydra.run.dir` must be pinned on the command line.

On a machine without CUDA, `accelerate` never starts DeepSpeed (it sees no GPU backend), so `deepspeed_cpu_state`
starts the process group itself (DeepSpeed's CPU accelerator, gloo) and tells `TrainingArguments` to use it.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Sequence

from omegaconf import DictConfig

from po.errors import ConfigError


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


def deepspeed_cpu_state(cfg: DictConfig) -> dict[str, Any]:
    """TrainingArguments kwargs for a DeepSpeed run on CPU (DS_ACCELERATOR=cpu, gloo); {} otherwise.

    accelerate only starts DeepSpeed's process group on a GPU backend, so here it is started with gloo in an
    accelerate `PartialState` marked as DeepSpeed, which `TrainingArguments` then reuses (`use_configured_state`).
    A single process started without a launcher gets the environment DeepSpeed needs (else it looks for MPI).
    """
    import torch

    if not cfg.deepspeed.get("config") or torch.cuda.is_available():
        return {}
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend=cfg.trainer.get("ddp_backend") or "gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"accelerator_config": {"use_configured_state": True}}
