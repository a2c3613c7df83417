"""A real one-node Slurm cluster for the tests (munge + slurmctld + slurmd), started once per test session.

Import the fixture into a test module: `from tests.helpers.slurm import slurm_cluster  # noqa: F401`.
Everything lives in a temporary directory: its own munge key and socket, a generated slurm.conf on private
ports (so a developer's or another session's Slurm is untouched), state, spool, pid and log files. The daemons
are stopped by their pid files when the session ends. Needs root and Debian's `slurmd slurmctld slurm-client
munge` (slurm/install_test_slurm.sh); without them the tests that use the fixture are skipped with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "srun")
PARTITION = "debug"


@dataclass
class SlurmCluster:
    """Where the test cluster lives; `env` is os.environ plus SLURM_CONF, for subprocesses."""

    root: Path
    conf: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def job_state(self, job_id: str) -> str:
        """State of a job from slurmctld (kept in memory for MinJobAge=3600 s after it ends)."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields.get("JobState", "UNKNOWN")

    def job_field(self, job_id: str, name: str) -> str:
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields.get(name, "")

    def wait_job(self, job_id: str, timeout: float = 300, states: tuple[str, ...] = ("COMPLETED",)) -> str:
        """Wait until the job reaches a final state; return it (asserting nothing)."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED"}
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in final or state in states:
                return state
            time.sleep(1)
        return f"still {state} after {timeout:.0f} s"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))


def submit(cmd: list[str], env: dict[str, str]) -> str:
    """Run an `sbatch --parsable ...` command line from the checkout; the job id it printed."""
    out = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_log(log_dir: Path, job_id: str) -> str:
    """The job's output file (`--output=LOG_DIR/%x-%j.out`), or a placeholder when it wrote none."""
    logs = list(log_dir.glob(f"*-{job_id}.out"))
    return logs[0].read_text() if logs else "(no job log)"


def job_env(**extra: str) -> dict[str, str]:
    """The environment for `po-train`/`sbatch` subprocesses (jobs inherit it): this checkout first on the path,
    this interpreter's bin first on PATH, offline, one thread per process."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def sweep_point(sweep: Path, override: str) -> Path:
    """The run dir of one sweep point: Hydra names it from the point's overrides (`a=1,loss.beta=0.1,...`)."""
    dirs = [p for p in sweep.iterdir() if override in p.name.split(",")]
    assert len(dirs) == 1, f"{override}: {sorted(p.name for p in sweep.iterdir())}"
    return dirs[0]


def release_when_requeued(cluster: SlurmCluster, job: str, timeout: float = 240) -> list[str]:
    """Slurm holds a requeued job for about 2 minutes (Reason=BeginTime); start it sooner to keep the test short.
    Returns the states seen (for failure messages)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, restarts = cluster.job_state(job), int(cluster.job_field(job, "Restarts") or 0)
        if not seen or seen[-1] != f"{state}/{restarts}":
            seen.append(f"{state}/{restarts}")
        if state == "PENDING" and restarts >= 1:
            # Not at once: right after a requeue slurmd still refuses the job id ("already killed").
            time.sleep(10)
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
            return seen
        if state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}:
            return seen  # not requeued: the assertions below say what happened
        time.sleep(0.2)
    return seen


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


def slurm_conf_common(root: Path, munge_socket: Path, kill_wait: int, node_suffix: str = "") -> str:
    """The slurm.conf lines every test cluster shares: root runs everything, munge on a private socket, cores as
    consumable resources, a fast backfill, no accounting; state, spool, pid and log files under `root` (per node
    with `node_suffix="-%n"`)."""
    spool = "/%n" if node_suffix else ""
    return f"""\
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
KillWait={kill_wait}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool{spool}
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd{node_suffix}.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd{node_suffix}.log
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
"""


def _slurm_conf(root: Path, munge_socket: Path) -> str:
    # At least 4 CPUs even on a 2-core machine (config_overrides: trust the config, not the hardware): the test
    # jobs are tiny, and a sweep's points or a driver job and its points must be able to run side by side.
    cpus = max(os.cpu_count() or 1, 4)
    memory = max(_memory_mb() // 2, 512)  # below the real figure, else slurmd marks the node invalid
    return f"""\
ClusterName=potest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
{slurm_conf_common(root, munge_socket, kill_wait=30)}\
NodeName=localhost CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _start_munge(root: Path) -> Path:
    """munged as the munge user with a fresh key and a private socket (its directory must be reachable by all)."""
    munge = root / "munge"
    munge.mkdir()
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    user = pwd.getpwnam("munge")
    for path in (munge, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    key.chmod(0o400)
    munge.chmod(0o755)
    sock = munge / "munge.socket"
    result = subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={sock}", f"--key-file={key}",
                             f"--log-file={munge}/munged.log", f"--pid-file={munge}/munged.pid",
                             f"--seed-file={munge}/munged.seed"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"munged did not start: {result.stderr.strip()}")
    return sock


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start munge, slurmctld and slurmd; wait for the node to be idle; stop them all at the end."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm tests need a local Slurm: {', '.join(missing)} not found "
                    "(install with: sudo bash slurm/install_test_slurm.sh)")
    if os.geteuid() != 0:
        pytest.skip("Slurm tests need root to start munged/slurmctld/slurmd (run them in CI or as root)")
    # Not under pytest's private (0700) temp dir: munged runs as the munge user and checks that every directory
    # above its socket is reachable by all.
    root = Path(tempfile.mkdtemp(prefix="po-test-slurm-"))
    root.chmod(0o755)
    (root / "state").mkdir()
    (root / "spool").mkdir()
    pid_files = [root / "slurmd.pid", root / "slurmctld.pid", root / "munge" / "munged.pid"]
    try:
        sock = _start_munge(root)
        conf = root / "slurm.conf"
        conf.write_text(_slurm_conf(root, sock))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        cluster = SlurmCluster(root, conf, env)
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, capture_output=True, timeout=30)
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], env=env, check=True, capture_output=True,
                       timeout=30)
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"test Slurm node not idle after 60 s (state {state!r}):\n{cluster.logs()}")
        # submitit and the scripts call sbatch/squeue from this process: point them at the test cluster.
        previous = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
        cluster.run("scancel", "--partition", PARTITION, check=False)  # this private cluster's jobs only
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
    finally:
        for pid_file in pid_files:
            _stop(pid_file)
        shutil.rmtree(root, ignore_errors=True)
