"""Hydra's own run-directory files (`.hydra/*.yaml` and the job log), written by po once the run directory is claimed.

Hydra, left alone, writes `.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml` and opens `<job name>.log` in the run
directory before it calls po (hydra/core/utils.py `run_job`), on every rank of a multi-process launch. A start that po
then refuses (a finished run, or a directory another process holds) would already have changed the directory.
conf/train.yaml therefore turns both off (`hydra.output_subdir: null`; `hydra/job_logging: po`, the console only),
and po writes the same files, under the same names and with the content Hydra would have written, on global rank 0
after `po.run.lock.claim_run_dir` (`po-report` reads `.hydra/overrides.yaml`). A sweep point that fails for another
reason before that (a bad value) still gets its `.hydra/` files beside `error.txt` (po.cli.train), so po-report names it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from po.atomic import write_text_atomic
from po.run.paths import RunPaths

HYDRA_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's default job log format


@dataclass(frozen=True)
class HydraJobFiles:
    configs: dict[str, str]   # file name under .hydra/ -> its YAML text
    log_name: str             # the job log, `<hydra.job.name>.log`


def snapshot_job_files(task_cfg: DictConfig) -> HydraJobFiles:
    """Hydra's files for this job, taken when the task starts (before po adds keys to the config)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}, the object Hydra itself saves as hydra.yaml
    return HydraJobFiles(
        configs={"config.yaml": OmegaConf.to_yaml(task_cfg), "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
                 "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)},
        log_name=f"{hydra_cfg.hydra.job.name}.log",
    )


def write_job_configs(run_dir: Path, files: HydraJobFiles) -> None:
    """Write `.hydra/*.yaml`, each atomically."""
    for name, text in files.configs.items():
        write_text_atomic(RunPaths(run_dir).hydra / name, text)


def write_job_files(run_dir: Path, files: HydraJobFiles, fresh_log: bool = False) -> logging.Handler:
    """Write `.hydra/*.yaml` and send the root logger to the job log (appended to, unless `fresh_log`); return the
    log's handler for `close_job_log`."""
    write_job_configs(run_dir, files)
    root = logging.getLogger()
    handler = logging.FileHandler(Path(run_dir) / files.log_name, mode="w" if fresh_log else "a")
    console = next((h.formatter for h in root.handlers if h.formatter is not None), None)
    handler.setFormatter(console or logging.Formatter(HYDRA_FORMAT))
    root.addHandler(handler)
    return handler


def close_job_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
