"""A private Slurm cluster on this one host: munged, slurmctld and two slurmd (`-N n1`, `-N n2`), each on its own
port with NodeAddr 127.0.0.1, from a slurm.conf written into a temporary directory. Nothing of the machine's own
Slurm or munge configuration is read or touched: SLURM_CONF and `AuthInfo=socket=...` point every command here.

Four partitions over both nodes: `batch` (the default), `urgent` (a higher PriorityTier: its jobs preempt the
others' jobs, which Slurm requeues, PreemptMode=REQUEUE), `nograce` (as `batch`, but preempted without GraceTime:
SIGTERM and KillWait later SIGKILL) and `short` (a one-minute MaxTime). Memory is a consumable resource and
jobacct_gather/linux with OverMemoryKill kills a step that uses more than its job's memory, as Slurm's task/cgroup
would (cgroups are not Slurm's to manage in this container): Slurm ends the job FAILED and says so in its output.
Every daemon and command runs in the cluster's directory, so nothing Slurm writes lands in the checkout.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

NODES = ("n1", "n2")
CPUS_PER_NODE = 4  # declared, not real: config_overrides lets two 2-core "nodes" share one machine
MEMORY_MB = 16000  # declared too; a job's memory limit (--mem, else DEF_MEM_PER_CPU) is enforced, though
DEF_MEM_PER_CPU = 2000


def installed() -> bool:
    return all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch"))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def slurm_conf(root: Path, ctld_port: int, node_ports: dict[str, int]) -> str:
    nodes = "\n".join(
        f"NodeName={name} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 Port={port} "
        f"CPUs={CPUS_PER_NODE} RealMemory={MEMORY_MB} State=UNKNOWN"
        for name, port in node_ports.items()
    )
    all_nodes = ",".join(node_ports)
    return f"""\
ClusterName=vitqtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU={DEF_MEM_PER_CPU}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
MpiDefault=none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=10
MinJobAge=600
InactiveLimit=0
MessageTimeout=10
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
{nodes}
PartitionName=batch Nodes={all_nodes} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes={all_nodes} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
PartitionName=short Nodes={all_nodes} MaxTime=1 State=UP PriorityTier=1 GraceTime=30
PartitionName=nograce Nodes={all_nodes} MaxTime=INFINITE State=UP PriorityTier=1
"""


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # SLURM_CONF for every Slurm command

    def run(self, *command: str, check: bool = True) -> str:
        done = subprocess.run(
            command, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=60
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
        return done.stdout

    def fail_node(self, name: str, reason: str) -> None:
        """A node that stops answering, as a crashed machine does: its slurmd is killed (SIGKILL, so its jobs'
        processes get no signal from Slurm and live on, unsupervised by it) and Slurm is told it is down."""
        os.kill(int((self.root / f"slurmd-{name}.pid").read_text().split()[0]), signal.SIGKILL)
        self.run("scontrol", "update", f"nodename={name}", "state=down", f"reason={reason}")

    def restore_node(self, name: str) -> None:
        """The failed node back: its slurmd started again and returned to service."""
        conf = self.env["SLURM_CONF"]
        subprocess.run(
            ["slurmd", "-f", conf, "-N", name], env=self.env, check=True, timeout=30, cwd=self.root
        )
        self.run("scontrol", "update", f"nodename={name}", "state=resume", check=False)

    def cancel_all(self, timeout: float = 30.0) -> None:
        """scancel every job and wait for them to end: stopping the daemons under running jobs would leave their
        batch scripts and sruns behind, waiting for a controller that is gone."""
        self.run("scancel", "--user", getpass.getuser(), check=False)
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-o", "%i", check=False).strip() and time.monotonic() < deadline:
            time.sleep(0.5)

    def wait_nodes_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-p", "batch", "-o", "%N %t", check=False).split()
            if states[1::2] and all(s == "idle" for s in states[1::2]) and len(states) == 2 * len(NODES):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm nodes not idle: {states}; see {self.root}")


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    """Start munged, slurmctld and the slurmds; stop each by its PID file on the way out, whatever happened."""
    munge = root / "munge"
    munge.mkdir(parents=True, mode=0o700)
    (root / "state").mkdir()
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ctld_port, *ports = _free_ports(1 + len(NODES))
    node_ports = dict(zip(NODES, ports, strict=True))
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, ctld_port, node_ports))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pid_files = [munge / "munged.pid", root / "slurmctld.pid", *(root / f"slurmd-{n}.pid" for n in NODES)]
    try:
        subprocess.run(
            [
                "munged",
                "--force",  # as root, in a directory munged would otherwise find too open
                f"--socket={munge / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            check=True,
            timeout=30,
            cwd=root,
        )
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, timeout=30, cwd=root)
        for name in NODES:
            subprocess.run(["slurmd", "-f", str(conf), "-N", name], env=env, check=True, timeout=30, cwd=root)
        cluster = Cluster(root, env)
        cluster.wait_nodes_idle()
        try:
            yield cluster
        finally:
            cluster.cancel_all()
    finally:
        for pid_file in reversed(pid_files):
            _stop(pid_file)
