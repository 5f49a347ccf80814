"""`python -m worker.slurm.node JOB_ID`: one node's supervisor inside a Slurm allocation, started by srun from the
batch script. Node 0 claims the job for this Slurm job (the claim is fenced by the Slurm job id the dispatcher
recorded, so a stale or requeued duplicate finds nothing) and runs it exactly as a Celery worker does; the other
nodes read its claim and run their part.

Slurm's signals reach every process of the step: SIGUSR1 (--signal, before the wall-time limit) and SIGTERM
(scancel, preemption, the limit itself) both make the trainer checkpoint and stop, and the supervisor hands the
job back at no cost. The trainer ignores SIGUSR1 (torchrun would die of it); the supervisor stops it. Whether
the stop costs an attempt is Slurm's to say once the Slurm job has ended (the dispatcher reads it): only an
scancel from outside vitq does. (Slurm's state while the signals are delivered does not tell a preemption from
an scancel: both read CANCELLED at times.)
"""

from __future__ import annotations

import signal

# Slurm may signal the step as soon as it starts (a wall-time limit close ahead, a preemption), while the imports
# below still run (seconds on a loaded node), and either signal's default action ends the process: the run would
# end FAILED ("task 0: User defined signal 1") and cost an attempt. Until main() installs the real handlers, a
# signal is only noted.
_EARLY_SIGNALS: list[int] = []
for _signum in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(_signum, lambda signum, _frame: _EARLY_SIGNALS.append(signum))

import logging
import os
import sys
import time

from api.core import launches, state_machine
from api.core.logging_setup import configure_logging, job_context
from api.core.settings import get_settings
from api.core.state_machine import Claim
from worker import supervisor
from worker.slurm import commands
from worker.slurm.place import SlurmPlace
from worker.supervisor import Database, Run

log = logging.getLogger("worker.slurm.node")
WAIT_POLL_SECONDS = 0.5


def stop_on_signals() -> None:
    """SIGTERM and SIGUSR1 set the supervisor's SHUTDOWN: the trainer checkpoints and the job is handed back."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda *_: supervisor.SHUTDOWN.set())
    if _EARLY_SIGNALS:  # one came during the imports
        supervisor.SHUTDOWN.set()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job_id = int(args[0])
    stop_on_signals()
    configure_logging(os.environ.get("VITQ_LOG_LEVEL", "INFO"))
    settings = get_settings()
    slurm_id = os.environ["SLURM_JOB_ID"]
    rank = int(os.environ.get("SLURM_NODEID", "0"))
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    hosts = tuple(commands.hostnames(os.environ["SLURM_JOB_NODELIST"]))
    ref = f"slurm:{slurm_id}"
    # One worker name per run of the Slurm job: a requeued run never shares the fence of the run before it.
    worker = f"{hosts[0]}:slurm-{slurm_id}" + (f".{restart}" if restart else "")
    sessions = supervisor.runner_sessions(settings)
    database = Database(sessions, job_id)
    deadline = time.monotonic() + settings.lease_seconds
    if supervisor.SHUTDOWN.is_set():  # told to stop before it claimed: nothing to hand back
        log.info("job %s: Slurm job %s was told to stop before it started", job_id, slurm_id)
        return 0
    claim: Claim | None
    if rank == 0:
        won = database.until(
            lambda s: (
                state_machine.claim_job(
                    session=s, job_id=job_id, worker=worker, executor_ref=ref, nodes=hosts
                )
                or False
            ),
            deadline,
        )
        claim = won if isinstance(won, Claim) else None
    else:
        claim = _wait_for_claim(database, job_id, ref, deadline)
    if claim is None:
        log.info("job %s: nothing to claim for Slurm job %s (taken, finished or cancelled)", job_id, slurm_id)
        return 0
    log.info("job %s: node %s of Slurm job %s runs attempt %s", job_id, rank, slurm_id, claim.attempt)
    place = None
    if len(hosts) > 1:
        addresses = {n.name: n.address for n in commands.nodes(names=hosts)}
        place = SlurmPlace(claim, rank, hosts, tuple(addresses.get(h, h) for h in hosts), slurm_id)

    with job_context(job_id):
        Run(
            claim=claim,
            settings=settings,
            enqueue=lambda _job, _pool: None,  # the dispatcher launches the job again, not a broker message
            database=Database(sessions, job_id),
            node=place,
            ignore_signals=(signal.SIGUSR1,),
        ).execute()
    return 0


def _wait_for_claim(database: Database, job_id: int, ref: str, deadline: float) -> Claim | None:
    """Node 0's claim, once it won it; None when it will not (the job is not this launch's to run)."""
    while time.monotonic() < deadline:
        # In this order: a job no longer claimable that is not running under this launch either is not ours.
        still = database.call(lambda s: launches.may_still_claim(session=s, job_id=job_id, executor_ref=ref))
        claim = database.call(lambda s: launches.running_claim(session=s, job_id=job_id, executor_ref=ref))
        if claim is not None:
            return claim
        if still is False:
            return None
        time.sleep(WAIT_POLL_SECONDS)
    return None


if __name__ == "__main__":
    sys.exit(main())
