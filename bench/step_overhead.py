"""What the trainer's step costs beyond the model's, measured in CPU time so that a machine shared with other work
still gives a reading (wall-clock rates there swing by ±40 % from one minute to the next).

    OMP_NUM_THREADS=1 python bench/step_overhead.py                    # Ti/4 @ 16 px, batch 64
    OMP_NUM_THREADS=1 python bench/step_overhead.py --variant Ti/4 --image-size 32 --batch-size 128

Alternates rounds of (a) `Trainer._train_step` on batches from the trainer's own loader (device batches with
augmentation, grad clipping, the scheduler) and (b) the bare step of bench/job_throughput.py (forward, loss,
backward, the same optimizer, one fixed batch), both in this process on the CPU, and prints the median of each
and their ratio. For the CPU only: on a GPU, process CPU time is not the step's time (use job_throughput.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from vit.config import JobSpec
from vit.distributed import setup
from vit.host_memory import keep_freed_memory
from vit.model import create_model
from vit.optim import build_optimizer
from vit.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="Ti/4")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps-per-round", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()  # as vit.train does
    cpu = torch.device("cpu")
    spec = JobSpec.model_validate(
        {
            "kind": "pretrain",
            "model": {"variant": args.variant, "image_size": args.image_size},
            "data": {"dataset": "synthetic", "augment": True},
            "train": {"steps": 1000, "batch_size": args.batch_size},
            "resources": {"device": "cpu"},
        }
    ).resolved()
    trainer = Trainer(spec, Path(tempfile.mkdtemp(prefix="step-overhead-")), setup("cpu"))
    trainer.restore()

    def endless() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from trainer.train_loader

    batches = endless()
    model = create_model(args.variant, num_classes=trainer.num_classes, image_size=args.image_size)
    optimizer = build_optimizer(model, spec.optim, cpu)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size) * 2 - 1
    labels = torch.randint(0, trainer.num_classes, (args.batch_size,))

    def bare() -> None:
        loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def trainer_step() -> None:
        trainer._train_step(*next(batches))

    steps: dict[str, Callable[[], None]] = {"bare": bare, "trainer": trainer_step}
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warmup
        step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            started = time.process_time()
            for _ in range(args.steps_per_round):
                step()
            rates[name].append(args.batch_size * args.steps_per_round / (time.process_time() - started))
    bare_rate, trainer_rate = statistics.median(rates["bare"]), statistics.median(rates["trainer"])
    print(
        f"{args.variant} @ {args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
        f"images per CPU-second (median of {args.rounds} rounds): bare step {bare_rate:.1f}, trainer step "
        f"{trainer_rate:.1f}; trainer / bare {trainer_rate / bare_rate:.3f}"
    )
    trainer.close()


if __name__ == "__main__":
    main()
