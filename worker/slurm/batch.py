"""What vitq asks of Slurm for one job: the sbatch options (the spec's resources become Slurm's) and the batch
script, which starts one supervisor per node with srun and waits for them through Slurm's signals."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vit.config import JobSpec, SlurmSpec, megabytes
from worker.slurm.commands import RUN_MARK

NAME_PREFIX = "vitq-"  # Slurm job names: vitq-<job id>; the dispatcher recognises its jobs by it
SIGNAL_SECONDS = 120  # --signal=USR1@N: the trainer's time to checkpoint before a wall-time limit


def job_name(job_id: int) -> str:
    return f"{NAME_PREFIX}{job_id}"


def job_of(name: str) -> int | None:
    rest = name.removeprefix(NAME_PREFIX)
    return int(rest) if name.startswith(NAME_PREFIX) and rest.isdigit() else None


@dataclass(frozen=True)
class PoolConfig:
    """One pool's Slurm configuration: `vitq slurm --pool NAME --partition P [options] [sbatch options]`."""

    pool: str
    partition: str
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = None  # CPUs per training process
    mem_per_task: str | None = None  # memory per training process ("8G")
    signal_seconds: int = SIGNAL_SECONDS
    gpus: bool = False  # the partition has GPUs (from scontrol): `device: auto` jobs ask for them
    extra: tuple[str, ...] = field(default_factory=tuple)  # further sbatch options, passed as given

    def per_task(self, spec: JobSpec) -> tuple[int | None, int | None]:
        """(CPUs, megabytes) per training process of this job: its resources.slurm's, else the pool's."""
        memory = megabytes(self.mem_per_task) if self.mem_per_task else None
        return (spec.resources.slurm or SlurmSpec()).per_task(cpus=self.cpus_per_task, memory_mb=memory)


def sbatch_options(job_id: int, spec: JobSpec, config: PoolConfig, run_dir: Path) -> list[str]:
    resources = spec.resources
    procs = resources.procs_per_node
    slurm = resources.slurm
    options = [
        f"--job-name={job_name(job_id)}",
        f"--partition={config.partition}",
        f"--nodes={resources.nodes}",
        f"--ntasks-per-node={procs}",
        f"--signal=USR1@{config.signal_seconds}",  # to every step's processes: the supervisors checkpoint
        "--requeue",  # a node failure or a preemption puts the same Slurm job back in Slurm's queue
        f"--output={run_dir / 'slurm-%j.out'}",
        "--open-mode=append",
        f"--chdir={run_dir}",
    ]
    wants_gpus = resources.device == "cuda" or (resources.device == "auto" and config.gpus)
    if wants_gpus:
        options.append(f"--gpus-per-node={procs}")
    cpus, memory = config.per_task(spec)
    if cpus:
        options.append(f"--cpus-per-task={cpus}")
    if memory:
        options.append(f"--mem={memory * procs}M")
    time = (slurm.time if slurm else None) or config.time
    account = (slurm.account if slurm else None) or config.account
    qos = (slurm.qos if slurm else None) or config.qos
    options += [f"--time={time}"] if time else []
    options += [f"--account={account}"] if account else []
    options += [f"--qos={qos}"] if qos else []
    return [*options, *config.extra]


def batch_script(job_id: int, spec: JobSpec, config: PoolConfig, code_root: Path) -> str:
    """One supervisor per node (srun), under this interpreter and this checkout of vitq (a shared filesystem)."""
    cpus = spec.resources.procs_per_node * (config.per_task(spec)[0] or 1)
    python = shlex.quote(sys.executable)
    return f"""#!/bin/bash
# vitq job {job_id} (pool {config.pool}), submitted by `vitq slurm`. Slurm runs it once per allocation, and again
# after it requeues the job (a preemption, a node failure); the supervisors decide whether there is work to do.
export PYTHONPATH={shlex.quote(str(code_root))}${{PYTHONPATH:+:$PYTHONPATH}}
# Each run starts its part of the output file: Slurm's own words after it (a preemption, a node failure, a memory
# limit) are this run's, and the dispatcher reads them when the run ends without its supervisor.
echo "{RUN_MARK} $SLURM_JOB_ID run ${{SLURM_RESTART_COUNT:-0}} on $(hostname)"
# The supervisors get Slurm's signals themselves (they checkpoint the trainer); this shell only waits for them.
trap 'true' TERM USR1
srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \\
     --cpus-per-task={cpus} --kill-on-bad-exit=1 {python} -m worker.slurm.node {job_id} &
step=$!
while ! wait "$step"; do kill -0 "$step" 2>/dev/null || break; done
wait "$step"
"""
