"""A real two-node Slurm cluster on one machine, for the multi-node tests: two network namespaces, two hostnames.

Use it in a test module: `from tests.helpers.multinode import multinode_cluster  # noqa: F401` (session-scoped).

Layout (docs: /work/shared/docs/slurm-notes.md has the measurements this follows):
- two network namespaces, `po<pid>n1` and `po<pid>n2`, joined by one veth pair created inside them (nothing is
  added to the machine's own network namespace); each has `lo` and one address in SUBNET, a private /24 that
  exists only inside these two namespaces, so no packet can reach any other address;
- one `munged` (its socket is a file: reachable from every namespace), with its own key, in a temporary folder;
- per node, `slurmd` started as `nsenter --net=<ns> unshare --uts --mount sh -c '...; exec slurmd'`: the UTS
  namespace gives the node its hostname (`node1`, `node2`), and the private mount namespace bind-mounts a hosts
  file that names both nodes over /etc/hosts, for the daemons and every job process they start. The machine's
  /etc/hosts is never written, so nothing is left in it even if the test session is killed;
- `slurmctld` in node1's namespaces; `slurm.conf` names each node with its address (`NodeAddr`) and uses per-node
  paths (`%n`) for the slurmd spool, pid and log files;
- the file system is shared, as a cluster's shared file system is: the repository, the test's run directories
  and caches are the same files on both nodes.
Clients (`sbatch`, `squeue`, `scontrol`, the submitit driver of a sweep) must run inside a node's network namespace
to reach `slurmctld`: `cluster.run(...)` does so, and `cluster.on(node, *cmd)` prefixes any command.
`nsenter --net` is used, not `ip netns exec`: the latter mounts a fresh /sys, which hides /sys/fs/cgroup from
slurmd ("Unable to initialize cgroup plugin").

Teardown (also after a failed start or a failed test): cancel this cluster's jobs, stop the daemons by their pid
files, SIGKILL by pid whatever process is still inside the two namespaces (job steps of cancelled jobs), delete the
namespaces (which deletes the veth pair), unmount and remove /run/netns if `ip netns add` made it for them, and
delete the temporary folder. The one-node fixture (tests/helpers/slurm.py) is
independent: its own munge, config and ports on the machine's own network; this fixture never touches
`os.environ["SLURM_CONF"]`, which that one sets, and passes its own SLURM_CONF to every command it runs.

Needs root, `ip`, `unshare`, `nsenter` and Debian's `slurmd slurmctld slurm-client munge`
(`sudo bash slurm/install_test_slurm.sh`); without them the tests that use it are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.slurm import BINARIES, SlurmCluster, _memory_mb, _start_munge, slurm_conf_common

TOOLS = ("ip", "unshare", "nsenter", "mount")
SUBNET = "10.218.18"         # a private /24, configured only inside the two namespaces created here
NODE_NAMES = ("node1", "node2")
PARTITION = "nodes"
CPUS_PER_NODE = 4             # declared (SlurmdParameters=config_overrides): tiny jobs, 2 ranks per node


@dataclass(frozen=True)
class Node:
    name: str      # hostname inside the node, and its Slurm NodeName
    netns: str     # network namespace (/run/netns/<netns>)
    address: str   # its address in SUBNET

    def enter(self, *cmd: str) -> list[str]:
        """`cmd` run in this node's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]


@dataclass
class MultiNodeCluster(SlurmCluster):
    """The two-node cluster; `run` (and so job_state, wait_job, ...) talks to slurmctld from node1's namespace."""

    nodes: tuple[Node, ...] = field(default_factory=tuple)

    def on(self, node: int, *cmd: str) -> list[str]:
        """`cmd` run inside node `node` (0 or 1)'s network namespace."""
        return self.nodes[node].enter(*cmd)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.on(0, *args), env=self.env, capture_output=True, text=True, check=check,
                              timeout=60)

    def processes(self, node: int, needle: str = "") -> list[int]:
        """Pids of the processes in node `node`'s network namespace whose command line contains `needle`."""
        return [pid for pid, cmdline in _processes_in(self.nodes[node].netns) if needle in cmdline]


def missing_tools() -> list[str]:
    return [b for b in (*BINARIES, *TOOLS) if shutil.which(b) is None]


def _netns_inode(netns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return None


def _processes_in(netns: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose network namespace is `netns` (compared by inode)."""
    inode = _netns_inode(netns)
    found = []
    if inode is None:
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino != inode:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        found.append((int(entry.name), cmdline))
    return found


def _sh(*cmd: str) -> None:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")


def _create_network(nodes: tuple[Node, ...]) -> None:
    """Two namespaces and a veth pair between them (its two ends created directly inside them)."""
    for node in nodes:
        _sh("ip", "netns", "add", node.netns)
    a, b = nodes
    _sh("ip", "-n", a.netns, "link", "add", "po0", "type", "veth", "peer", "name", "po0", "netns", b.netns)
    for node in nodes:
        _sh("ip", "-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "po0")
        _sh("ip", "-n", node.netns, "link", "set", "po0", "up")
        _sh("ip", "-n", node.netns, "link", "set", "lo", "up")


def _slurm_conf(root: Path, munge_socket: Path, nodes: tuple[Node, ...]) -> str:
    memory = max(_memory_mb() // 4, 512)  # below the real figure, else slurmd marks the node invalid
    node_lines = "\n".join(f"NodeName={n.name} NodeAddr={n.address} CPUs={CPUS_PER_NODE} RealMemory={memory} "
                           "State=UNKNOWN" for n in nodes)
    return f"""\
ClusterName=pomulti
SlurmctldHost={nodes[0].name}({nodes[0].address})
{slurm_conf_common(root, munge_socket, kill_wait=10, node_suffix="-%n")}\
{node_lines}
PartitionName={PARTITION} Nodes={','.join(n.name for n in nodes)} Default=YES MaxTime=INFINITE State=UP
"""


def _start_in_node(node: Node, hosts: Path, env: dict[str, str], *daemon: str) -> None:
    """Start a (self-daemonizing) Slurm daemon inside `node`: its network namespace, a UTS namespace with its
    hostname, and a private mount namespace where `hosts` is /etc/hosts."""
    script = 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"'
    cmd = node.enter("unshare", "--uts", "--mount", "--", "sh", "-c", script, str(hosts), node.name, *daemon)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{daemon[0]} on {node.name} did not start: {result.stderr.strip()}")


def _kill_all_in(netns: str) -> None:
    """SIGKILL, by pid, every process still inside `netns` (started by this fixture or by its daemons)."""
    for _ in range(3):
        left = _processes_in(netns)
        if not left:
            return
        for pid, _cmdline in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _wait_idle(cluster: MultiNodeCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    states = ""
    while time.monotonic() < deadline:
        states = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.strip()
        if sorted(states.splitlines()) == sorted(f"{n.name} idle" for n in cluster.nodes):
            return
        time.sleep(0.5)
    raise RuntimeError(f"test Slurm nodes not idle after {timeout:.0f} s ({states!r}):\n{cluster.logs()}")


def _stop_all(pid_files: list[Path], grace: float = 10) -> None:
    """SIGTERM the daemons of these pid files together; SIGKILL those still running after `grace` seconds."""
    pids = []
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            continue  # never started, or already gone
        pids.append(pid)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


NETNS_DIR = Path("/run/netns")


def _netns_dir_mounted() -> bool:
    """`ip netns add` makes /run/netns a mount point (a bind mount of itself) the first time it runs."""
    return any(line.split()[4] == str(NETNS_DIR) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def _remove_netns_dir(had_dir: bool, had_mount: bool) -> None:
    """Undo what `ip netns add` made for these namespaces: the /run/netns mount and folder, if they were not there
    before and no other namespace is in them now."""
    if not NETNS_DIR.is_dir() or any(NETNS_DIR.iterdir()):
        return
    if not had_mount and _netns_dir_mounted():
        subprocess.run(["umount", str(NETNS_DIR)], capture_output=True, timeout=30)
    if not had_dir and not _netns_dir_mounted():
        NETNS_DIR.rmdir()


def _stop_cluster(cluster: MultiNodeCluster | None, root: Path, nodes: tuple[Node, ...]) -> None:
    if cluster is not None and (root / "slurmctld.pid").exists():
        cluster.run("scancel", "--partition", PARTITION, check=False)  # this private cluster's jobs only
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and cluster.run("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.5)
    _stop_all([*(root / f"slurmd-{n.name}.pid" for n in nodes), root / "slurmctld.pid", root / "munge" / "munged.pid"])
    for node in nodes:
        _kill_all_in(node.netns)
        if _netns_inode(node.netns) is not None:
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True, timeout=30)


@contextlib.contextmanager
def two_node_cluster() -> Iterator[MultiNodeCluster]:
    """Start the two-node cluster (about 5 s); stop it and remove every trace of it when the block ends."""
    # Not under pytest's private (0700) temp dir: munged runs as the munge user and checks that every directory
    # above its socket is reachable by all.
    root = Path(tempfile.mkdtemp(prefix="po-test-slurm2-"))
    root.chmod(0o755)
    (root / "state").mkdir()
    tag = f"po{os.getpid()}"
    nodes = tuple(Node(name, f"{tag}n{i + 1}", f"{SUBNET}.{i + 1}") for i, name in enumerate(NODE_NAMES))
    for node in nodes:
        (root / "spool" / node.name).mkdir(parents=True)
    cluster = None
    had_netns_dir, had_netns_mount = NETNS_DIR.is_dir(), _netns_dir_mounted()
    try:
        _create_network(nodes)
        hosts = root / "hosts"
        hosts.write_text(Path("/etc/hosts").read_text().rstrip("\n") + "\n"
                         + "".join(f"{n.address} {n.name}\n" for n in nodes))
        sock = _start_munge(root)
        conf = root / "slurm.conf"
        conf.write_text(_slurm_conf(root, sock, nodes))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        cluster = MultiNodeCluster(root, conf, env, nodes)
        _start_in_node(nodes[0], hosts, env, "slurmctld", "-f", str(conf))
        for node in nodes:
            _start_in_node(node, hosts, env, "slurmd", "-f", str(conf), "-N", node.name)
        _wait_idle(cluster)
        yield cluster
    finally:
        _stop_cluster(cluster, root, nodes)
        _remove_netns_dir(had_netns_dir, had_netns_mount)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def multinode_cluster() -> Iterator[MultiNodeCluster]:
    """The two-node cluster for the whole test session (skipped, with the reason, where it cannot run)."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"multi-node Slurm tests need {', '.join(missing)} (install Slurm with: sudo bash "
                    "slurm/install_test_slurm.sh; ip, unshare, nsenter and mount come with iproute2/util-linux)")
    if os.geteuid() != 0:
        pytest.skip("multi-node Slurm tests need root (network namespaces, munged, slurmctld, slurmd)")
    with two_node_cluster() as cluster:
        yield cluster
