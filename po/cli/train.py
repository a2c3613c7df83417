"""`po-train` (= `python -m po.cli`): one preference-optimization run, or a sweep with `-m`.

Examples:
    po-train
    po-train loss=ipo loss.beta=0.5 trainer.max_steps=20
    po-train model=hf model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct data=jsonl data.path=prefs.jsonl
    po-train -m loss=dpo,ipo loss.beta=0.05,0.1
    torchrun --nproc_per_node 2 -m po.cli hydra.run.dir=runs/x deepspeed=zero3
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from po.atomic import write_text_atomic
from po.cli.common import errors_as_one_line, print_line
from po.config import conf_dir
from po.errors import POError
from po.run.distributed import is_main_process, require_pinned_run_dir
from po.run.job import train
from po.run.jobfiles import snapshot_job_files, write_job_configs
from po.run.launch import prepare_submitit_job, requeue_if_preempted
from po.run.lock import RunDirRefused
from po.run.paths import RunPaths
from po.trainer.preemption import TrainingPreempted

log = logging.getLogger("po")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    job_files = snapshot_job_files(cfg)  # Hydra's .hydra/ files: po writes them once the run dir is claimed
    prepare_submitit_job()  # sweeps on submitit: ranks from its task layout
    try:
        summary = train(cfg, run_dir, job_files)
    except TrainingPreempted as exc:  # a checkpoint is saved: exit 0 so a requeued job resumes from it
        print_line(f"po-train: preempted: {exc}")
        requeue_if_preempted(run_dir)  # a sweep point on Slurm stopped by a preemption resumes after requeue
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return None
        sys.exit(0)
    except Exception as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:  # leave the reason where po-report finds it (with .hydra/), then
            # let Hydra record the failure and go on with the other runs; a refused start leaves the dir untouched
            if not isinstance(exc, RunDirRefused) and is_main_process():
                write_job_configs(run_dir, job_files)
                write_text_atomic(RunPaths(run_dir).error, f"{type(exc).__name__}: {exc}\n")
            raise
        if not isinstance(exc, POError):
            raise
        print_line(f"po-train: error: {exc}")
        sys.exit(2)
    return summary["eval"].get("eval_loss")


def main() -> None:
    with errors_as_one_line("po-train"):
        require_pinned_run_dir(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
