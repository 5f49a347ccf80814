"""`vitq slurm --pool NAME --partition P [options] [sbatch options]` (also `python -m worker.slurm`): the Slurm
dispatcher of one pool, run on a login node. Options it does not know are passed to every sbatch as given."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from api.core.broker import DEFAULT_POOL


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="vitq slurm", description=__doc__)
    parser.add_argument("--pool", default=DEFAULT_POOL, help="the pool whose jobs this dispatcher runs")
    parser.add_argument("--partition", required=True, help="the Slurm partition its jobs go to")
    parser.add_argument(
        "--time", help="wall-time limit of each Slurm job (a job's resources.slurm.time wins)"
    )
    parser.add_argument("--account", help="sbatch --account (a job's resources.slurm.account wins)")
    parser.add_argument("--qos", help="sbatch --qos (a job's resources.slurm.qos wins)")
    parser.add_argument("--cpus-per-task", type=int, help="CPUs per training process")
    parser.add_argument("--mem-per-task", help="memory per training process, e.g. 8G")
    parser.add_argument(
        "--signal-seconds", type=int, default=120, help="SIGUSR1 this long before the time limit: checkpoint"
    )
    parser.add_argument("--max-pending", type=int, default=64, help="Slurm jobs waiting in Slurm at once")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="time between passes")
    parser.add_argument("--loglevel", default="INFO")
    args, extra = parser.parse_known_args(argv)
    if any(not option.startswith("-") for option in extra[:1]):
        parser.error(f"unrecognized arguments: {' '.join(extra)} (sbatch options start with -)")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    from api.core import workers
    from api.core.db import session_scope
    from api.core.logging_setup import configure_logging
    from api.core.settings import get_settings
    from vit.config import megabytes
    from worker.slurm.batch import PoolConfig
    from worker.slurm.dispatcher import Dispatcher

    configure_logging(args.loglevel)
    if args.mem_per_task:
        megabytes(args.mem_per_task)  # a bad size fails here, not in every sbatch
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        celery = [
            w.name
            for w in workers.live(session=session, lease_seconds=settings.lease_seconds)
            if w.pool == args.pool and w.partition is None
        ]
    if celery:
        print(
            f"vitq slurm: pool {args.pool!r} is served by Celery workers ({', '.join(celery)}); a pool has one "
            "executor: stop them or choose another pool",
            file=sys.stderr,
        )
        return 2
    config = PoolConfig(
        pool=args.pool,
        partition=args.partition,
        time=args.time,
        account=args.account,
        qos=args.qos,
        cpus_per_task=args.cpus_per_task,
        mem_per_task=args.mem_per_task,
        signal_seconds=args.signal_seconds,
        extra=tuple(extra),
    )
    dispatcher = Dispatcher(settings=settings, config=config, max_pending=args.max_pending)
    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger(__name__).info(
        "dispatching pool %s to Slurm partition %s (sbatch %s)", args.pool, args.partition, " ".join(extra)
    )
    try:
        dispatcher.run_forever(stop, args.poll_seconds)
    finally:
        dispatcher.retire()
    return 0


if __name__ == "__main__":
    sys.exit(main())
