"""`python -m vit.train SPEC --out RUN_DIR`: train one spec, alone or under torchrun (docs/contracts.md).

Exit codes (vit.rundir): 0 done; 1 error (traceback); 2 bad spec or data (one line on stderr); 74 fenced (run as
`--attempt N`, attempt N's lease ran out: stopped without saving); 75 stopped by SIGTERM/SIGINT after saving a
checkpoint. Rerunning the same command resumes from RUN_DIR/checkpoints/latest.

The trainer holds RUN_DIR/trainer.lock while it runs: a second trainer on the same directory waits for it (under
a supervisor, while its own lease is valid) or refuses to start (from a shell).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import pydantic
import yaml

from vit import rundir
from vit.config import JobSpec, SpecError, load_spec
from vit.data import DataError
from vit.distributed import DistContext, setup, teardown
from vit.host_memory import keep_freed_memory
from vit.rundir import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_FENCED, EXIT_INTERRUPTED, EXIT_OK
from vit.trainer import Fence, Fenced, StopRequest, Trainer


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vit.train", description="Train a Vision Transformer from a spec.")
    parser.add_argument("spec", type=Path, help="YAML or JSON training spec")
    parser.add_argument(
        "--out", type=Path, required=True, help="run directory (resumes if it has checkpoints)"
    )
    parser.add_argument(
        "--attempt",
        type=int,
        help="run as attempt N of a service job: stop without saving once RUN_DIR/lease-N.json runs out",
    )
    return parser.parse_args(argv)


def read_spec(path: Path) -> JobSpec:
    """The resolved spec; SpecError with one line naming every problem."""
    try:
        spec = load_spec(path)
    except FileNotFoundError:
        raise SpecError(f"spec file {str(path)!r} not found") from None
    except yaml.YAMLError as error:
        raise SpecError(f"spec {path} is not valid YAML/JSON: {' '.join(str(error).split())}") from None
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'spec'}: {item['msg']}"
            for item in error.errors()
        )
        raise SpecError(f"spec {path}: {problems}") from None
    except ValueError as error:
        raise SpecError(f"spec {path}: {error}") from None
    if spec.init is not None and spec.init.from_job is not None:
        raise SpecError(
            f"spec {path}: init.from_job is resolved by the service; to train here, use init.weights: <run dir>"
        )
    return spec.resolved()


class _StopOnSignal:
    """SIGTERM/SIGINT ask the trainer to checkpoint and stop at the next step boundary.

    Repeats are absorbed, not escalated: under torchrun a cancel reaches each rank twice (the signal to the
    process group, then the launcher forwarding its own), and both must end in the checkpoint.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.stop.requested = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # before the first step's allocations
    # Installed first: a stop during start-up still ends in a checkpoint at the first step boundary.
    stop = StopRequest()
    stopper = _StopOnSignal(stop)
    fence = Fence(args.out, args.attempt)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if int(os.environ.get("RANK", "0")) != 0:
            return _run(args, stop, fence)  # rank 0 alone holds the lock and writes the run directory
        # Under a supervisor, wait for a predecessor that is still stopping; from a shell, never share.
        keep_waiting = fence.held if args.attempt is not None else lambda: False
        with rundir.trainer_lock(args.out, keep_waiting=keep_waiting) as locked:
            if not locked:
                if args.attempt is not None:
                    print("lease ran out while waiting for the run directory", file=sys.stderr, flush=True)
                    return EXIT_FENCED
                print(f"error: another trainer is running in {args.out}", file=sys.stderr, flush=True)
                return EXIT_BAD_INPUT
            # Only the lock holder may cut the history back: lines past the checkpoint it resumes from would
            # repeat the steps it trains again.
            rundir.rewind_metrics(args.out, rundir.latest_checkpoint_step(args.out))
            return _run(args, stop, fence)
    finally:
        stopper.restore()


def _run(args: argparse.Namespace, stop: StopRequest, fence: Fence) -> int:
    ctx: DistContext | None = None
    trainer: Trainer | None = None
    clean = False
    try:
        spec = read_spec(args.spec)
        ctx = setup(spec.resources.device)
        trainer = Trainer(spec, args.out, ctx, stop=stop, fence=fence)
        resumed_from = trainer.restore()
        if args.attempt is not None and ctx.is_main:
            rundir.record_attempt_start(args.out, args.attempt, resumed_from)
        finished = trainer.train()
        clean = True
        return EXIT_OK if finished else EXIT_INTERRUPTED
    except Fenced:
        clean = True
        return EXIT_FENCED
    except (SpecError, DataError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception:
        traceback.print_exc()
        return EXIT_ERROR
    finally:
        if trainer is not None:
            trainer.close()
        if ctx is not None:
            # After an error other ranks may never reach a barrier: leave without waiting for them.
            teardown(ctx, wait_for_others=clean)


if __name__ == "__main__":
    sys.exit(main())
