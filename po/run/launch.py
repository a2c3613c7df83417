"""Glue between Hydra's submitit launchers (hydra/launcher=slurm|local) and a training run.

torchrun gives every rank RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; submitit instead starts
`nodes x tasks_per_node` copies of the Hydra task and describes them in its own variables. `prepare_submitit_job`
turns that layout into torch.distributed's variables, so one sweep point can span several GPUs or nodes.

Preemption: on Slurm's warning signal the trainer checkpoints, writes RUN_DIR/PREEMPTED and exits cleanly.
slurm/train.sbatch requeues its job when it sees the marker; `requeue_if_preempted` does the same for a sweep
point running under submitit on Slurm. The requeued point starts the same pickled job again, in the same run dir,
and resumes from the newest checkpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from po.run.distributed import is_main_process
from po.run.paths import RunPaths

log = logging.getLogger(__name__)


def submitit_executor() -> str | None:
    """'slurm' or 'local' inside a job started by submitit, else None."""
    return os.environ.get("SUBMITIT_EXECUTOR")


def prepare_submitit_job() -> None:
    """Export torch.distributed's variables for a multi-task submitit job.

    It writes nothing: the run directory is only changed once it is claimed (a stale PREEMPTED marker is removed
    by the resume, po.run.rundir), and `requeue_if_preempted` is called only for a preemption of this very start."""
    if submitit_executor() is None:
        return
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    job = submitit.JobEnvironment()
    if job.num_tasks > 1 and "RANK" not in os.environ:
        # The Trainer picks the device from LOCAL_RANK, so CUDA_VISIBLE_DEVICES is left as Slurm set it.
        dist = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        log.info("submitit task %d of %d (rendezvous %s:%d)", dist.rank, dist.world_size, dist.master_addr,
                 dist.master_port)


def requeue_if_preempted(run_dir: Path) -> None:
    """If this submitit Slurm job stopped for a preemption (marker present), requeue it and leave without a result.

    As submitit's own requeue does: exiting by SystemExit writes no result file, so the sweep keeps waiting for
    the requeued job instead of taking the interrupted run as finished.
    """
    if submitit_executor() != "slurm" or not RunPaths(run_dir).preempted.exists():
        return
    if not is_main_process():
        return
    job_id = os.environ["SLURM_JOB_ID"]
    log.warning("preempted: checkpoint saved in %s; requeueing Slurm job %s to resume", run_dir, job_id)
    subprocess.run(["scontrol", "requeue", job_id], check=False)
    raise SystemExit(-1)
