"""POST → every node running, for a 2-node job: how long a gang takes to form and launch.

    .venv/bin/python bench/multinode_start.py          # 5 jobs, two workers on this machine (loopback)
    .venv/bin/python bench/multinode_start.py --jobs 10 --database-url postgresql+psycopg://postgres@127.0.0.1/test

Two real `python -m worker` processes (tests/e2e/stack.py's service: the API under uvicorn, PostgreSQL, Redis)
run 2-node x 1-process gloo jobs one after the other. For each job it times, from the POST's answer:
  running   the job row says running (the member completing the gang started it)
  trainers  both nodes' trainer processes exist (read from /proc: both torchrun children under the workers)
  step 1    the first metric point is stored (rendezvous, process group and first step done)
Each job trains a few steps and finishes before the next is posted, so the workers are idle at each POST.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.core.db import scratch_database
from api.core.settings import Settings
from tests.e2e.stack import Stack, running_stack, tiny_spec
from worker.launch import descendants

POLL_S = 0.02


def trainers_running(stack: Stack, job_id: int) -> int:
    """How many workers have a trainer of this job below them."""
    out = str(stack.settings.run_dir(job_id))
    count = 0
    for worker in stack.workers:
        for pid in descendants(worker.pid):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if "vit.train" in args and out in args and "torch.distributed.run" not in args:
                count += 1
                break
    return count


def one_job(stack: Stack) -> dict[str, float]:
    spec = tiny_spec(steps=6, checkpoint_every=100)
    spec["resources"] |= {"nodes": 2, "procs_per_node": 1}
    spec["train"] |= {"log_every": 1}
    posted = time.monotonic()
    job_id = stack.post(spec)["id"]
    marks: dict[str, float] = {}
    deadline = posted + 300
    while "step 1" not in marks:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not start: {stack.job(job_id)}")
        now = time.monotonic() - posted
        if "running" not in marks and stack.job(job_id)["status"] == "running":
            marks["running"] = now
        if "trainers" not in marks and trainers_running(stack, job_id) == 2:
            marks["trainers"] = now
        if stack.metric_steps(job_id, "loss"):
            marks["step 1"] = now
            marks.setdefault("running", now)
            marks.setdefault("trainers", now)
        time.sleep(POLL_S)
    stack.wait_status(job_id, "succeeded", timeout=300)
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as home,
        scratch_database(args.database_url, "vitq_bench_nodes") as url,
    ):
        settings = Settings(  # authentication off: the scheduling is under test, not permissions
            home=Path(home), database_url=url, broker_url=args.broker_url, queue="bench-nodes", auth="off"
        )
        with running_stack(settings) as stack:
            for _ in range(2):
                stack.start_worker(VITQ_ADVERTISE_ADDRESS="127.0.0.1")
            while len(stack.client.get("/workers").json()["items"]) < 2:
                time.sleep(0.2)
            results = [one_job(stack) for _ in range(args.jobs)]
    for name in ("running", "trainers", "step 1"):
        values = [r[name] for r in results]
        print(
            f"POST -> {name:8s}: median {statistics.median(values):6.2f} s, "
            f"min {min(values):6.2f} s, max {max(values):6.2f} s  ({len(values)} jobs)"
        )


if __name__ == "__main__":
    main()
