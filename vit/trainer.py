"""The training loop: one resolved spec, one run directory, alone or as one rank of a torch.distributed group.

State that resume needs is `state_dict()` (optimizer, scheduler, step, data position, per-rank RNG); the weights
go next to it as model.safetensors (and their moving average as ema.safetensors). Each optimizer step consumes
one global batch (train.batch_size, whatever the number of processes), split into this rank's share, regularized
as a whole (vit.regularize), then cut into micro batches whose gradients accumulate (DDP syncs only on the last).
Steps, the schedule, logging and checkpoints all count optimizer steps; a stop waits for the step to end.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from vit import checkpoint, rng, rundir
from vit.compile import compile_for_training, wanted
from vit.config import JobSpec, SpecError
from vit.data import build_datasets, build_loader, set_epoch, training_augmentation
from vit.data.device_batches import build_train_batches
from vit.data.splits import subset_indices
from vit.distributed import DistContext, all_reduce_sum, gather_objects, max_over_ranks
from vit.evaluate import few_shot_eval, top1
from vit.flops import Peak, device_peak, training_flops_per_image
from vit.metrics_log import MetricsLog
from vit.model import VisionTransformer, create_model
from vit.optim import build_optimizer, build_scheduler, load_training_state
from vit.precision import UnsupportedPrecision, autocast, check_supported, convert_to_fp8
from vit.regularize import BatchRegularizer
from vit.weights import load_pretrained

# What the ranks agree to do at a step boundary (the largest wish wins): go on, checkpoint and stop, or stop at
# once without saving because this attempt's lease ran out (a successor may be about to take the run directory).
GO_ON, STOP_AND_SAVE, STOP_FENCED = 0, 1, 2


class StopRequest:
    """Set (e.g. by a signal handler) to make the trainer checkpoint and stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False


class Fence:
    """This attempt's lease as the trainer sees it: held while its supervisor keeps renewing RUN_DIR's lease
    file for it. Read at most once a second; a trainer without a supervisor (`vitq train`) is never fenced."""

    CHECK_EVERY_S = 1.0

    def __init__(self, run_dir: Path, attempt: int | None) -> None:
        self.run_dir = run_dir
        self.attempt = attempt
        self._checked_at = 0.0
        self._held = True

    def held(self) -> bool:
        if self.attempt is None or not self._held:
            return self._held
        now = time.monotonic()
        if now - self._checked_at >= self.CHECK_EVERY_S:
            self._checked_at = now
            self._held = rundir.lease_valid(self.run_dir, self.attempt)
        return self._held


class Fenced(Exception):
    """The lease ran out: the trainer stopped without saving (exit code rundir.EXIT_FENCED)."""


class Trainer:
    """Build with the constructor, then call `restore()` (resume or initial weights), then `train()`."""

    def __init__(
        self,
        spec: JobSpec,
        run_dir: Path,
        ctx: DistContext,
        *,
        stop: StopRequest | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.spec = spec.resolved()
        self.run_dir = run_dir
        self.ctx = ctx
        self.total_steps = self.spec.train.steps
        self.step = 0
        # Data position: the epoch being read and the number of its batches already consumed.
        self.epoch = 0
        self.batch = 0
        self.stop = stop or StopRequest()
        self.fence = fence or Fence(run_dir, None)
        self.per_rank_batch, self.micro_batch = self._batch_split()
        self.accumulation = self.per_rank_batch // self.micro_batch
        # Same seed on every rank before building the model: identical initial weights (DDP broadcasts anyway).
        rng.seed_everything(self.spec.train.seed)
        self._build_data()
        self.model: VisionTransformer = create_model(
            self.spec.model.variant, num_classes=self.num_classes, **self.spec.model.create_kwargs()
        )
        self.model.to(ctx.device)
        self._set_precision()
        self.optimizer = build_optimizer(self.model, self.spec.optim, ctx.device)
        # A probe (train.steps 0) steps no optimizer; the schedule still needs a length.
        self.scheduler = build_scheduler(self.optimizer, self.spec.optim, max(self.total_steps, 1))
        self.regularizer = BatchRegularizer(
            self.spec.data, self.spec.train.label_smoothing, self.num_classes, ctx.device
        )
        self.ema: ModelEmaV3 | None = None  # built by restore(), from the weights training starts with
        self.ddp: nn.Module = self.model  # wrapped for DDP by restore(), once the weights are final
        self.restored = False
        self.metrics = MetricsLog(run_dir, enabled=ctx.is_main, total_steps=self.total_steps)
        if ctx.is_main:
            rundir.atomic_write_text(run_dir / rundir.SPEC_FILE, self.spec.model_dump_json(indent=2) + "\n")

    def restore(self) -> int | None:
        """Resume from the run directory's latest checkpoint, or start from `init` weights (or from scratch).
        Returns the step resumed from, None for a fresh start."""
        resume_from = rundir.latest_checkpoint(self.run_dir)
        if resume_from is not None:
            self._resume(resume_from)
        else:
            if self.spec.init is not None:
                self._load_init_weights()
            # Distinct streams per rank from here on (dropout, augmentation in the main process).
            rng.seed_everything(self.spec.train.seed + self.ctx.rank)
        if self.spec.train.ema_decay is not None:
            self.ema = ModelEmaV3(self.model, decay=self.spec.train.ema_decay)
            saved = resume_from / rundir.EMA_WEIGHTS_FILE if resume_from is not None else None
            if saved is not None and saved.is_file():  # else (EMA turned on at resume) it starts from here
                self.ema.module.load_state_dict(load_file(str(saved)), strict=True)
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.restored = True
        return self.step if resume_from is not None else None

    # ----------------------------------------------------------------------------------------------- building
    def _batch_split(self) -> tuple[int, int]:
        """(this rank's share of the global batch, micro batch size)."""
        train_spec, world = self.spec.train, self.ctx.world_size
        if train_spec.batch_size % world:
            raise SpecError(f"train.batch_size {train_spec.batch_size} is not divisible by {world} processes")
        per_rank = train_spec.batch_size // world
        micro = train_spec.micro_batch_size or per_rank
        if per_rank % micro:
            raise SpecError(f"the per-process batch {per_rank} is not a multiple of micro_batch_size {micro}")
        return per_rank, micro

    def _build_data(self) -> None:
        train_spec = self.spec.train
        datasets = build_datasets(self.spec.data, image_size=self.spec.model.image_size, seed=train_spec.seed)
        self.num_classes = datasets.num_classes
        # In-memory datasets are batched and augmented on the training device; file datasets by CPU workers.
        self.train_loader = build_train_batches(
            datasets.train,
            # A probe (train.steps 0) reads no batch: a few-shot dataset smaller than one batch is fine there.
            batch_size=self.per_rank_batch if self.total_steps else 1,
            image_size=self.spec.model.image_size,
            augmentation=training_augmentation(self.spec.data),
            seed=train_spec.seed,
            num_workers=self.spec.data.num_workers,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            device=self.ctx.device,
            per_image=self.spec.data.rand_augment is not None,
            decode=self.spec.data.decode,
        )
        set_epoch(self.train_loader, 0)
        self.batches_per_epoch = len(self.train_loader)
        self.val_loader = self._eval_loader(datasets.val)
        self.few_shot_loader = self._few_shot_loader() if self.spec.eval.few_shot else None

    def _eval_loader(
        self, dataset: Dataset[tuple[torch.Tensor, int]]
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        # Every rank evaluates its share of the split (each image exactly once across ranks); see `evaluate`.
        return build_loader(
            dataset,
            batch_size=self.spec.eval.batch_size,
            shuffle=False,
            seed=self.spec.train.seed,
            num_workers=self.spec.data.num_workers,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )

    def _few_shot_loader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        """Training images without augmentation, at most max(few_shot) per class (the probe's support set)."""
        plain = self.spec.data.model_copy(update={"augment": False, "rand_augment": None})
        train = build_datasets(plain, image_size=self.spec.model.image_size, seed=self.spec.train.seed).train
        labels = train.labels
        support = subset_indices(labels, max(self.spec.eval.few_shot), self.spec.train.seed)
        return self._eval_loader(Subset(train, support.tolist()))

    def _load_init_weights(self) -> None:
        assert self.spec.init is not None and self.spec.init.weights is not None
        try:
            report = load_pretrained(self.model, self.spec.init.weights, ema=self.spec.init.ema)
        except (FileNotFoundError, ValueError) as error:
            raise SpecError(f"init.weights: {error}") from None
        if isinstance(self.model.head, nn.Linear):
            # The paper's fine-tuning rule: a new zero-initialized head, even when the class count matches.
            nn.init.zeros_(self.model.head.weight)
            nn.init.zeros_(self.model.head.bias)
        resized = ", ".join(f"{key} {old}->{new}" for key, (old, new) in report.resized.items())
        self._say(f"initialized from {report.source} ({resized or 'no resize'}; new zero-initialized head)")

    def _resume(self, path: Path) -> None:
        self.model.load_state_dict(load_file(str(path / rundir.WEIGHTS_FILE)), strict=True)
        self.load_state_dict(checkpoint.load_state(path))
        meta = checkpoint.read_meta(path)
        if meta.get("spec") != self.spec.model_dump(mode="json"):
            self._say(
                f"warning: the spec differs from the one {path.name} was trained with; using the new one"
            )
        self._say(f"resumed from {path.name} (step {self.step})")

    def _say(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Training state of every rank; a collective call (it gathers the per-rank RNG states)."""
        return {
            "step": self.step,
            "data": {"epoch": self.epoch, "batch": self.batch},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": gather_objects(self.ctx, rng.capture(self.ctx.device)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        if self.step > self.total_steps:
            raise SpecError(
                f"the checkpoint is at step {self.step}, beyond train.steps {self.total_steps}: "
                "raise train.steps or use a new run directory"
            )
        self.epoch, self.batch = int(state["data"]["epoch"]), int(state["data"]["batch"])
        load_training_state(self.optimizer, self.scheduler, state["optimizer"], state["scheduler"])
        rng_states = state["rng"]
        if self.ctx.rank < len(rng_states):
            rng.restore(rng_states[self.ctx.rank], self.ctx.device)
        else:  # resumed with more processes than saved: new ranks get fresh, distinct streams
            rng.seed_everything(self.spec.train.seed + self.ctx.rank + self.step)

    # ---------------------------------------------------------------------------------------------- loop
    def train(self) -> bool:
        """Train to train.steps; False if stopped early by the stop request (a checkpoint was saved)."""
        if not self.restored:
            raise RuntimeError("Trainer.restore() must run before train()")
        spec = self.spec.train
        if self.total_steps == 0:
            # A probe: evaluate the initial weights as they are (frozen features for few-shot), train nothing.
            self.evaluate()
            return True
        if self.step >= self.total_steps:
            self._say(f"already complete at step {self.step}")
            return True
        self._prepare_speed()
        window = _Window()
        while self.step < self.total_steps:
            set_epoch(self.train_loader, self.epoch, skip_batches=self.batch)
            batches = iter(self.train_loader)
            while self.step < self.total_steps:
                if self._stop_now():
                    return False
                started = time.perf_counter()
                try:
                    images, labels = next(batches)
                except StopIteration:
                    break
                loss, grad_norm = self._train_step(images, labels)
                self.step += 1
                self.batch += 1
                window.add(loss, grad_norm, time.perf_counter() - started)
                if self.step % spec.log_every == 0 or self.step == self.total_steps:
                    self._log_train(window)
                    window = _Window()
                last = self.step == self.total_steps
                if last or (spec.eval_every and self.step % spec.eval_every == 0):
                    self.evaluate()
                if last or (spec.checkpoint_every and self.step % spec.checkpoint_every == 0):
                    self.save_checkpoint()
            self.epoch, self.batch = self.epoch + 1, 0
        return True

    def _stop_now(self) -> bool:
        """At a step boundary: checkpoint and stop when asked to; raise Fenced when the lease ran out."""
        wish = STOP_FENCED if not self.fence.held() else STOP_AND_SAVE if self.stop.requested else GO_ON
        agreed = max_over_ranks(self.ctx, wish)
        if agreed == STOP_FENCED:
            self._say(
                f"lease lost at step {self.step}: stopping without saving (the job is someone else's now)"
            )
            raise Fenced
        if agreed == STOP_AND_SAVE:
            self._say(f"stop requested: saving a checkpoint at step {self.step}")
            self.save_checkpoint()
            return True
        return False

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over this rank's batch; returns (mean loss, grad norm) as device tensors."""
        self.ddp.train()
        device = self.ctx.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        images, targets = self.regularizer(images, labels)
        total_loss = torch.zeros((), device=device)
        micro_images, micro_targets = images.split(self.micro_batch), targets.split(self.micro_batch)
        for index, (x, y) in enumerate(zip(micro_images, micro_targets, strict=True)):
            # Gradients are all-reduced once per step, after the last micro batch.
            sync = index == self.accumulation - 1
            no_sync: AbstractContextManager[Any] = (
                self.ddp.no_sync()
                if isinstance(self.ddp, DistributedDataParallel) and not sync
                else nullcontext()
            )
            with no_sync:
                with self._autocast():
                    loss = self.regularizer.loss(self.ddp(x).float(), y)
                # Equal micro batches: the mean of their means is the batch mean (DDP then averages ranks).
                (loss / self.accumulation).backward()
            total_loss += loss.detach()
        clip = self.spec.optim.clip_grad_norm or 0.0
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        grad_norm = (
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            if clip > 0
            else nn.utils.get_total_norm(grads)
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            # timm's train.py: the count of updates including this one (the first update copies the weights).
            self.ema.update(self.model, step=self.step + 1)
        return total_loss / self.accumulation, grad_norm.detach()

    def _autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.spec.train.precision, self.ctx.device)

    def _set_precision(self) -> None:
        """Refuse a precision the device cannot run; fp8: Linear layers to float8 (vit.precision)."""
        try:
            check_supported(self.spec.train.precision, self.ctx.device)
        except UnsupportedPrecision as error:
            raise SpecError(str(error)) from None
        if self.spec.train.precision == "fp8":
            layers = convert_to_fp8(self.model)
            self._say(f"fp8: {len(layers)} Linear layers train in float8, the rest in bf16")

    def _prepare_speed(self) -> None:
        """Before the first step: the peak MFU is measured against, and train.compile (vit.compile), whose time
        goes into the first train line as compile_s, outside every images/s interval."""
        self.peak: Peak = device_peak(self.ctx.device)
        self.flops_per_image = training_flops_per_image(self.model.cfg)
        gflop, tflops = self.flops_per_image / 1e9, self.peak.flops_per_s / 1e12
        self._say(f"mfu: {gflop:.2f} GFLOP per training image; peak {tflops:.3g} TFLOP/s, {self.peak.source}")
        self.first_line_extras: dict[str, float] = {}
        if not wanted(self.spec.train.compile, self.ctx.device):
            return
        size = self.spec.model.image_size
        images = torch.zeros(self.micro_batch, 3, size, size, device=self.ctx.device)
        labels = torch.zeros(self.micro_batch, dtype=torch.int64, device=self.ctx.device)
        compiled = compile_for_training(self.ddp, images=images, labels=labels, autocast=self._autocast)
        self.ddp = compiled.module
        if compiled.error is None:
            self._say(f"torch.compile: compiled in {compiled.seconds:.1f} s")
        else:
            self._say(f"warning: torch.compile failed, training eager: {compiled.error}")
        self.first_line_extras = {"compile_s": compiled.seconds}

    def _log_train(self, window: _Window) -> None:
        loss_sum, norm_sum, seconds = window.totals()
        loss_sum, norm_sum, seconds_sum = all_reduce_sum(self.ctx, [loss_sum, norm_sum, seconds])
        ranks = self.ctx.world_size
        images = window.steps * self.spec.train.batch_size
        # Mean time per rank: ranks run in lockstep, so it is the interval's wall time.
        images_per_s = images / max(seconds_sum / ranks, 1e-9)
        per_rank_flops = images_per_s * self.flops_per_image / ranks
        raised = self.peak.at_least(per_rank_flops)
        if raised is not self.peak:
            self.peak = raised
            self._say(
                f"mfu: peak raised to {raised.flops_per_s / 1e12:.3g} TFLOP/s, the rate training reached"
            )
        self.metrics.log(
            self.step,
            {
                "loss": loss_sum / (window.steps * ranks),
                "lr": float(max(self.scheduler.get_last_lr())),  # the top layer's under layer-wise decay
                "grad_norm": norm_sum / (window.steps * ranks),
                "images_per_s": images_per_s,
                "epoch": self.epoch + self.batch / self.batches_per_epoch,
                "mfu": per_rank_flops / self.peak.flops_per_s,
                # What MFU was divided by and how it was found (vit.flops.PeakKind), for the dashboard to say.
                "peak_tflops": self.peak.flops_per_s / 1e12,
                "peak_kind": float(self.peak.kind),
                **self.first_line_extras,
            },
        )
        self.first_line_extras = {}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """val_loss, val_top1 and few_shot_{n} over the whole split, and the same of the EMA weights prefixed
        ema_ (train.ema_decay); a collective call, every rank gets them.

        The ranks share the work rather than rank 0 doing it alone: besides being world-size times faster, it
        keeps the others from waiting in the next step's all-reduce, where a long evaluation (a large split,
        few-shot features) would outlast the process group's timeout (10 min for NCCL) and kill the run.
        """
        results = self._evaluate(self.model)
        if self.ema is not None:
            results |= {f"ema_{name}": value for name, value in self._evaluate(self.ema.module).items()}
        self.metrics.log(self.step, results)
        return results

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        device = self.ctx.device
        distributed = self.ctx.distributed
        with self._autocast():
            val_loss, val_top1 = top1(model, self.val_loader, device, distributed=distributed)
            results = {"val_loss": float(val_loss), "val_top1": float(val_top1)}
            if self.few_shot_loader is not None:
                results |= few_shot_eval(
                    model,
                    self.few_shot_loader,
                    self.val_loader,
                    self.spec.eval.few_shot,
                    self.num_classes,
                    self.spec.eval.few_shot_l2,
                    device,
                    seed=self.spec.train.seed,
                    distributed=distributed,
                )
        return results

    def save_checkpoint(self) -> None:
        """Collective: every rank contributes its RNG state; rank 0 writes."""
        state = self.state_dict()
        if self.ctx.is_main:
            checkpoint.save_checkpoint(
                self.run_dir,
                step=self.step,
                model=self.model,
                state=state,
                spec=self.spec.model_dump(mode="json"),
                keep=self.spec.train.keep_checkpoints,
                ema=self.ema.module if self.ema is not None else None,
            )

    def close(self) -> None:
        self.metrics.close()


class _Window:
    """Sums over the steps since the last train log line (kept on the device until the line is written)."""

    def __init__(self) -> None:
        self.steps = 0
        self.loss: torch.Tensor | float = 0.0
        self.grad_norm: torch.Tensor | float = 0.0
        self.seconds = 0.0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, seconds: float) -> None:
        self.steps += 1
        self.loss = self.loss + loss
        self.grad_norm = self.grad_norm + grad_norm
        self.seconds += seconds

    def totals(self) -> tuple[float, float, float]:
        """Reading the sums waits for the device to finish the window's steps; that wait is window time too (a
        GPU runs steps behind the host: the host's time alone would overstate images/s)."""
        started = time.perf_counter()
        loss, grad_norm = float(self.loss), float(self.grad_norm)
        return loss, grad_norm, self.seconds + time.perf_counter() - started
