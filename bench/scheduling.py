"""Scheduling decisions per second: 50 registered workers (8 GPUs each, two pools) claim from 1,000 queued jobs
of mixed pools, priorities and GPU counts, through the real claim (api.core.state_machine.claim) on PostgreSQL.

    .venv/bin/python bench/scheduling.py [--workers 50 --jobs 1000]

Prints claims per second, and the same claims against a queue of 10 jobs (the reference, same run): how much the
queue's length costs a decision.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.core import state_machine, workers
from api.core.db import make_engine, scratch_database
from api.core.migrate import upgrade
from vit.config import JobSpec

PG_ADMIN_URL = os.environ.get("VITQ_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
GPU = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}


def fill(session: Session, *, workers_n: int, jobs_n: int) -> None:
    random.seed(0)
    for i in range(workers_n):
        workers.announce(
            session=session,
            name=f"node{i}:1",
            host=f"node{i}",
            pid=1,
            pool="h100" if i % 2 else "default",
            devices=[{"index": d, **GPU} for d in range(8)],
            concurrency=8,
        )
    for i in range(jobs_n):
        resources = {"pool": random.choice(["default", "h100"]), "priority": random.choice([0, 0, 0, 5, 10])}
        resources["procs_per_node"] = random.choice([1, 1, 2, 4, 8])
        spec = JobSpec.model_validate({"kind": "pretrain", "name": f"j{i}", "resources": resources})
        state_machine.submit(session=session, spec=spec, max_attempts=3, parent=None)
    session.commit()


def decisions_per_second(url: str, *, workers_n: int, jobs_n: int, claims: int) -> float:
    engine = make_engine(url)
    with Session(engine) as session:
        fill(session, workers_n=workers_n, jobs_n=jobs_n)
        free = {f"node{i}:1": list(range(8)) for i in range(workers_n)}
        started = time.perf_counter()
        made = 0
        for n in range(claims):
            name = f"node{n % workers_n}:1"
            pool = "h100" if (n % workers_n) % 2 else "default"
            won = state_machine.claim(session=session, worker=name, pool=pool, free_devices=free[name])
            if won is not None:
                free[name] = [d for d in free[name] if d not in won.devices]
                if not free[name]:
                    free[name] = list(range(8))  # its jobs ended: all devices free again
            made += 1
        elapsed = time.perf_counter() - started
    engine.dispose()
    return made / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=300)
    args = parser.parse_args()
    rates = {}
    for label, jobs in (("reference, 10 queued", 10), (f"{args.jobs} queued", args.jobs)):
        with scratch_database(PG_ADMIN_URL, "vitq_sched") as url:
            upgrade(url)
            claims = min(args.claims, jobs)
            rates[label] = decisions_per_second(url, workers_n=args.workers, jobs_n=jobs, claims=claims)
        print(f"{args.workers} workers, {label}: {rates[label]:,.0f} scheduling decisions/s")
    reference, full = rates.values()
    print(f"ratio {args.jobs} queued / 10 queued: {full / reference:.2f}")


if __name__ == "__main__":
    main()
