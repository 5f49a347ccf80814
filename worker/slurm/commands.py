"""Slurm's own commands (sbatch, squeue, scancel, sinfo, scontrol), run as subprocesses and parsed: the only code
that knows their output. Plain commands rather than PySlurm (which builds against one Slurm's headers) or
submitit (whose pickled-function jobs and own requeue logic would duplicate the supervisor's): the four calls
vitq needs are stable across Slurm releases in these formats."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 30.0
RUN_MARK = (
    "vitq: Slurm job"  # the batch script's first line in its output file, once per run of the Slurm job
)
PREEMPTION = "DUE TO PREEMPTION"  # slurmstepd's words in the output file when Slurm preempts the job
# Nodes in these states (sinfo %T) are not the reason a job was lost; any other state of its node may be.
HEALTHY = frozenset({"idle", "mixed", "allocated", "completing", "planned", "reserved"})
# A job in one of these states is over: nothing of it runs, and Slurm will not run it again.
TERMINAL = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
# sbatch refusals no retry can fix: the job fails with Slurm's words. Anything else is retried.
PERMANENT_REFUSALS = (
    "Requested node configuration is not available",
    "Node count specification invalid",
    "More processors requested than permitted",
    "Invalid generic resource",
    "Invalid account",
    "Invalid qos",
    "Requested time limit is invalid",
    "invalid partition specified",
    "Memory required by task is not available",
    "Job violates accounting/QOS policy",
)


class SlurmError(Exception):
    """A Slurm command failed; `permanent` when it refused the request itself (not a passing outage)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class SlurmJob:
    id: str
    name: str
    state: str  # squeue's %T: PENDING, RUNNING, COMPLETING, CANCELLED, ...
    reason: str  # why it pends (Priority, Resources, QOSMaxJobsPerUser, ...), or how it ended
    nodes: str  # its node list when it runs

    @property
    def over(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class SlurmNode:
    name: str
    address: str
    cpus: int
    gpus: int
    memory_mb: int  # what a job may ask for (RealMemory); 0: not configured


def _run(command: Sequence[str], *, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            list(command), input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SlurmError(f"{command[0]}: {error}") from None
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[
            -1
        ]
        message = message.removeprefix("sbatch: error: ")
        permanent = command[0] == "sbatch" and any(p.lower() in message.lower() for p in PERMANENT_REFUSALS)
        raise SlurmError(message, permanent=permanent)
    return done.stdout


def submit(options: Sequence[str], script: str) -> str:
    """sbatch the script (on stdin) with these options; the new job's id."""
    out = _run(["sbatch", "--parsable", *options], stdin=script).strip()
    return out.split(";", 1)[0]  # --parsable: "id" or "id;cluster"


def jobs(user: str, name_prefix: str) -> dict[str, SlurmJob]:
    """The user's jobs whose names start with the prefix, recently finished ones included (MinJobAge)."""
    out = _run(["squeue", "-h", "-t", "all", "-u", user, "-o", "%i|%j|%T|%r|%N"])
    found: dict[str, SlurmJob] = {}
    for line in out.splitlines():
        parts = line.split("|", 4)
        if len(parts) == 5 and parts[1].startswith(name_prefix):
            found[parts[0]] = SlurmJob(*parts)
    return found


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        _run(["scancel", *job_ids])


def hostnames(node_list: str) -> list[str]:
    """n[1-2] -> [n1, n2] (scontrol, which knows every form Slurm writes)."""
    return _run(["scontrol", "show", "hostnames", node_list]).split()


def nodes(partition: str | None = None, names: Sequence[str] = ()) -> list[SlurmNode]:
    """The nodes of a partition (or these named ones), with what a job may ask of each."""
    out = _run(["scontrol", "-o", "show", "node", *([",".join(names)] if names else [])])
    members = set(_run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"]).split()) if partition else None
    found = []
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        name = fields.get("NodeName", "")
        if not name or (members is not None and name not in members):
            continue
        found.append(
            SlurmNode(
                name=name,
                address=fields.get("NodeAddr") or name,
                cpus=int(fields.get("CPUTot") or 0),
                gpus=gpu_count(fields.get("Gres", "")),
                # RealMemory=1 is Slurm's default for a node whose memory is not configured: unknown, not 1 MB.
                memory_mb=memory if (memory := int(fields.get("RealMemory") or 0)) > 1 else 0,
            )
        )
    return found


def gpu_count(gres: str) -> int:
    """GPUs in a Gres string: "gpu:4", "gpu:a100:4(S:0-1)", "gpu:a100:2,gpu:v100:2"; 0 for "(null)"."""
    total = 0
    for part in gres.split(","):
        fields = part.split("(", 1)[0].split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def node_problems(names: Sequence[str]) -> list[str]:
    """These nodes' troubles as Slurm states them: "n2 down (vitq-test)"; healthy nodes say nothing."""
    if not names:
        return []
    out = _run(["sinfo", "-h", "-N", "-n", ",".join(names), "-o", "%N|%T|%E"])
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, state, reason = [*line.split("|", 2), "", ""][:3]
        if state.rstrip("*~#!%$@^-") not in HEALTHY or state.endswith("*"):
            found[name] = f"{name} {state}" + (f" ({reason})" if reason and reason != "none" else "")
    return [found[name] for name in names if name in found]


def run_messages(output_file: Path) -> list[str]:
    """Slurm's own lines (slurmstepd's and srun's errors) in the last run's part of a batch job's output file:
    why that run ended, in Slurm's words ("... exceeded memory limit ...", "... DUE TO PREEMPTION ***")."""
    try:
        text = output_file.read_text(errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith(RUN_MARK)), default=-1)
    found: list[str] = []
    for line in lines[start + 1 :]:
        if (line.startswith("slurmstepd") or line.startswith("srun: error")) and line not in found:
            found.append(line.strip())
    return found
