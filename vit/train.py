"""`python -m vit.train SPEC --out RUN_DIR`: train one spec, alone or under torchrun (docs/contracts.md).

Exit codes: 0 done; 1 error (traceback); 2 bad spec or data (one line on stderr); 75 stopped by SIGTERM/SIGINT
after saving a checkpoint. Rerunning the same command resumes from RUN_DIR/checkpoints/latest.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import pydantic
import yaml

from vit.config import JobSpec, load_spec
from vit.data import DataError
from vit.distributed import DistContext, setup, teardown
from vit.trainer import SpecError, StopRequest, Trainer

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request, resumable


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vit.train", description="Train a Vision Transformer from a spec.")
    parser.add_argument("spec", type=Path, help="YAML or JSON training spec")
    parser.add_argument(
        "--out", type=Path, required=True, help="run directory (resumes if it has checkpoints)"
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
    # Installed first: a stop during start-up still ends in a checkpoint at the first step boundary.
    stop = StopRequest()
    stopper = _StopOnSignal(stop)
    ctx: DistContext | None = None
    trainer: Trainer | None = None
    clean = False
    try:
        spec = read_spec(args.spec)
        ctx = setup(spec.resources.device)
        args.out.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(spec, args.out, ctx, stop=stop)
        finished = trainer.train()
        clean = True
        return EXIT_OK if finished else EXIT_INTERRUPTED
    except (SpecError, DataError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception:
        traceback.print_exc()
        return EXIT_ERROR
    finally:
        stopper.restore()
        if trainer is not None:
            trainer.close()
        if ctx is not None:
            # After an error other ranks may never reach a barrier: leave without waiting for them.
            teardown(ctx, wait_for_others=clean)


if __name__ == "__main__":
    sys.exit(main())
