"""POST → first stored step on the Slurm executor and on the Celery executor, same machine, same job; and what the
Slurm dispatcher costs per job.

    .venv/bin/python bench/slurm_start.py            # 5 jobs each (needs slurm-wlm and munge, as root)

A private Slurm cluster on this host (tests/worker/slurm/cluster.py: slurmctld and two slurmd), the API
(tests/e2e/stack.py) on PostgreSQL and Redis, one `vitq slurm` dispatcher (pool `hpc`) and one `python -m worker`
(pool `default`). The same one-node tiny job is posted to each pool in turn, one at a time (idle executors at
each POST), and timed from the POST's answer to its first metric point in the database. The dispatcher's cost:
its CPU time (user + system, from /proc) per Slurm job it handled, sbatch and squeue included (children), with
its idle cost per pass measured first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.core.db import scratch_database
from api.core.settings import Settings
from tests.e2e.stack import Stack, running_stack, tiny_spec
from tests.worker.slurm.cluster import running_cluster

POLL_S = 0.02


def cpu_seconds(pid: int) -> float:
    """User + system time of the process and its waited-for children (sbatch, squeue), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def first_step_s(stack: Stack, pool: str) -> float:
    job = stack.post(tiny_spec(steps=20, resources={"pool": pool}))
    posted = time.monotonic()
    while not stack.metric_steps(job["id"], "loss"):
        time.sleep(POLL_S)
    elapsed = time.monotonic() - posted
    stack.wait_status(job["id"], "succeeded", timeout=120)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp) / "slurm") as cluster,
        scratch_database(args.database_url, "vitq_bench_slurm") as url,
    ):
        settings = Settings(
            home=Path(tmp) / "vitq",
            database_url=url,
            broker_url=args.redis_url,
            queue=f"vitq-bench-{os.getpid()}",
            heartbeat_seconds=1,
            auth="off",
        )
        with running_stack(settings) as stack:
            stack.start_worker()
            log = (settings.home / "dispatcher.log").open("ab")
            dispatcher = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker.slurm",
                    "--pool",
                    "hpc",
                    "--partition",
                    "batch",
                    "--poll-seconds",
                    "0.5",
                ],
                env={**stack.env(), **cluster.env},
                stdout=log,
                stderr=log,
            )
            try:
                time.sleep(5)  # start-up, and a first pass that publishes the partition's nodes
                idle_from, idle_cpu = time.monotonic(), cpu_seconds(dispatcher.pid)
                time.sleep(10)
                idle_passes = (time.monotonic() - idle_from) / 0.5
                idle_per_pass = (cpu_seconds(dispatcher.pid) - idle_cpu) / idle_passes
                first_step_s(stack, "default")  # warm both paths (imports, page cache)
                first_step_s(stack, "hpc")
                celery, slurm = [], []
                busy_cpu, busy_s = 0.0, 0.0
                for _ in range(args.jobs):
                    celery.append(first_step_s(stack, "default"))
                    before, started = cpu_seconds(dispatcher.pid), time.monotonic()
                    slurm.append(first_step_s(stack, "hpc"))
                    time.sleep(3)  # the dispatcher's last look at the ended Slurm job
                    busy_cpu += cpu_seconds(dispatcher.pid) - before
                    busy_s += time.monotonic() - started
            finally:
                dispatcher.terminate()
                dispatcher.wait(timeout=30)
    per_job = (busy_cpu - idle_per_pass * busy_s / 0.5) / args.jobs
    print(f"POST -> first stored step, median of {args.jobs} one-node tiny jobs (CPU, this machine):")
    print(
        f"  Celery worker       {statistics.median(celery):6.2f} s   (all: {', '.join(f'{t:.2f}' for t in celery)})"
    )
    print(
        f"  Slurm (sbatch)      {statistics.median(slurm):6.2f} s   (all: {', '.join(f'{t:.2f}' for t in slurm)})"
    )
    print(f"  ratio Slurm/Celery  {statistics.median(slurm) / statistics.median(celery):6.2f}")
    print(
        f"dispatcher CPU: {idle_per_pass * 1000:.1f} ms per idle pass (every 0.5 s here, 2 s by default); "
        f"{per_job * 1000:.0f} ms per Slurm job beyond that (sbatch, squeue, reconcile)"
    )


if __name__ == "__main__":
    main()
