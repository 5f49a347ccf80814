"""The training spec: the single source of truth for what a job asks for.

The trainer (`vit.train`), the API (`POST /jobs`) and the CLI all validate against `JobSpec`. A spec as sent may
leave most fields out; `JobSpec.resolved()` fills the paper's defaults for its kind (pretrain or finetune) so
that what is stored and run states every choice explicitly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from braceexpand import braceexpand
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vit.recipes import RECIPES, apply_recipe

# Paper Table 1 (Ti and S from the reference configs): variant -> (depth, embed_dim, mlp_dim, num_heads).
# Kept here, free of torch, so that the API checks a spec's shapes on submission; vit.model builds from it.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (12, 192, 768, 3),
    "S": (12, 384, 1536, 6),
    "B": (12, 768, 3072, 12),
    "L": (24, 1024, 4096, 16),
    "H": (32, 1280, 5120, 16),
}
VARIANT_PATTERN = re.compile(rf"^({'|'.join(PRESETS)})/([1-9][0-9]*)$")
DATASETS = ("synthetic", "digits", "cifar10", "cifar100", "pets", "flowers102", "imagefolder", "shards")
# The class count of each dataset that has a fixed one (synthetic: data.synthetic_classes; image folders and
# shards: their files'), known before any file is read (vit/model_size.py counts the head's parameters with it).
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "pets": 37, "flowers102": 102}
# Datasets that read files: they need `data.root` (the embedded ones are built in memory).
FILE_DATASETS = ("cifar10", "cifar100", "pets", "flowers102", "imagefolder", "shards")
# The datasets whose training images can be decoded on the training device (`data.decode`): the encoded files.
DEVICE_DECODE_DATASETS = ("imagefolder", "shards")
# Where `vitq data pack` shards can be read from: a local or shared-filesystem directory, or over HTTP(S).
SHARD_URL_SCHEMES = ("http://", "https://")


def shard_pattern(root: str) -> tuple[str, list[str]] | None:
    """A brace pattern's (base directory or URL, shard file names), as WebDataset expands it:
    `https://host/ds/train-{000000..001023}.tar` -> ("https://host/ds", ["train-000000.tar", ...]). None: `root`
    holds no brace (a pack output's directory). ValueError naming the pattern when it is malformed."""
    if "{" not in root and "}" not in root:
        return None
    base, _, name = root.rpartition("/")
    if "{" in base or "}" in base:
        raise ValueError(
            f"data.root {root!r}: a shard pattern's braces may only be in the file name, not in its directory"
        )
    try:
        names = list(braceexpand(name))
    except ValueError:  # braceexpand.UnbalancedBracesError
        names = [name]
    if any("{" in n or "}" in n for n in names):
        raise ValueError(
            f"data.root {root!r} is a malformed shard pattern: write a range as {{000000..001023}} or a list as {{a,b}}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"data.root {root!r}: the shard pattern names a shard twice")
    return base or ".", names


# The numeric options of timm's rand_augment_transform (timm.data.auto_augment).
RAND_AUGMENT_PATTERN = re.compile(r"^rand(-(m|n|mstd|mmax|p)[0-9]+(\.[0-9]+)?|-inc[01])*$")
# A job's (and a sweep's) name: shown in lists and used in file names of exports.
NAME_PATTERN = r"^[\w.\- ]+$"
MAX_NAME_CHARS = 128

PositiveInt = Annotated[int, Field(gt=0)]
DEFAULT_POOL = "default"  # the pool of a spec that names none (resources.pool)


class SpecError(ValueError):
    """A spec that cannot run as written: a problem the user fixes in the spec, not a bug (the trainer exits
    with code 2, the worker fails the job at once: retrying cannot help)."""


class _Strict(BaseModel):
    # Unknown fields are errors, not silently ignored typos (`lerning_rate`).
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    variant: str = Field("Ti/16", description='Preset and patch size, e.g. "Ti/4", "B/16", "H/14".')
    image_size: int = Field(224, ge=8, le=1024)
    # Overrides of the preset, with timm's keyword names where timm has one.
    patch_size: int | None = Field(None, ge=1, le=64)
    embed_dim: int | None = Field(None, ge=8, le=4096)
    depth: int | None = Field(None, ge=1, le=64)
    num_heads: int | None = Field(None, ge=1, le=64)
    mlp_dim: int | None = Field(None, ge=8, le=16384)
    pool: Literal["cls", "gap"] = "cls"
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    attn_drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Stochastic depth of the last block; linear from 0 over depth (timm).",
    )

    @field_validator("variant")
    @classmethod
    def _check_variant(cls, variant: str) -> str:
        # A field validator, so that the error's location is model.variant (the dashboard marks that line).
        if VARIANT_PATTERN.match(variant) is None:
            raise ValueError(
                f'must look like "B/16" (one of Ti, S, B, L, H and a patch size), got {variant!r}'
            )
        return variant

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelSpec:
        match = VARIANT_PATTERN.match(self.variant)
        assert match is not None  # checked by _check_variant
        patch = self.patch_size or int(match.group(2))
        if self.image_size % patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch size {patch}")
        _, preset_width, _, preset_heads = PRESETS[match.group(1)]
        width, heads = self.embed_dim or preset_width, self.num_heads or preset_heads
        if width % heads:
            raise ValueError(
                f"embed_dim {width} is not divisible by num_heads {heads} "
                f"({'set' if self.embed_dim else match.group(1) + ' preset'} width, "
                f"{'set' if self.num_heads else match.group(1) + ' preset'} heads)"
            )
        return self

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vit.create_model` besides num_classes."""
        overrides = self.model_dump(exclude={"variant"}, exclude_none=True)
        return overrides


class AugmentSpec(_Strict):
    """Random resized crop (area kept, as fractions of the image) and an optional horizontal flip."""

    crop_scale: tuple[float, float] = Field(description="[min, max] share of the image's area a crop keeps.")
    flip: bool = Field(description="Mirror half the images: only where a mirrored image keeps its label.")

    @model_validator(mode="after")
    def _check(self) -> AugmentSpec:
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale [{low}, {high}] must satisfy 0 < min <= max <= 1")
        return self


# Named augmentations for `data.augment`, besides "none".
AUGMENT_PRESETS: dict[str, AugmentSpec] = {
    # Natural photos at full resolution: the reference code's inception crop, area 5%..100%, and mirror flips.
    "photo": AugmentSpec(crop_scale=(0.05, 1.0), flip=True),
    # Small or tightly framed photos: a 5% crop of a 32-px image is a 7-px patch with nothing left to recognise.
    "light": AugmentSpec(crop_scale=(0.5, 1.0), flip=True),
    # Symbols (digits, letters, icons) that fill their frame: deep crops cut the strokes that tell 7 from 1,
    # and a mirrored symbol is another one, so no flip.
    "symbol": AugmentSpec(crop_scale=(0.8, 1.0), flip=False),
}
AugmentPreset = Literal["photo", "light", "symbol", "none"]
AUGMENT_HELP = (
    "true (the dataset's default), false, a preset ("
    + ", ".join([*AUGMENT_PRESETS, "none"])
    + ") or {crop_scale: [min, max], flip: true|false}"
)


class DataSpec(_Strict):
    dataset: Literal[
        "synthetic", "digits", "cifar10", "cifar100", "pets", "flowers102", "imagefolder", "shards"
    ] = "synthetic"
    root: str | None = Field(
        None,
        description="Directory of the dataset's files (required for file datasets); for shards, the directory "
        "or http(s):// URL holding the index.json that `vitq data pack` wrote, or a brace pattern of WebDataset "
        "shards (`/data/ds/train-{0000..0099}.tar`, `https://host/ds/train-{000000..001023}.tar`).",
    )
    download: bool = Field(False, description="Let torchvision download the dataset into root when missing.")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Held-out share for datasets without a split."
    )
    subset: float | int | None = Field(
        None, description="Training subset: a fraction in (0, 1] or a number of images per class."
    )
    augment: bool | AugmentPreset | AugmentSpec = Field(
        True, description="Training augmentation: " + AUGMENT_HELP
    )
    num_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Loader processes per trainer for file datasets; none: from the CPU count (in-memory "
        "datasets are batched on the training device and use none).",
    )
    # The default stays loader until the device path has been measured on a GPU (bench/gpu_check.sh 7).
    decode: Literal["auto", "loader", "device"] = Field(
        "loader",
        description="Where training images are decoded (imagefolder, shards): loader = CPU loader workers; device "
        "= batched on the training device (nvJPEG on a GPU), the workers only read bytes; auto = device when "
        "training on CUDA without rand_augment, else loader.",
    )
    # Batch regularization, with timm's names and meanings (timm.data.Mixup, RandomErasing, RandAugment).
    rand_augment: str | None = Field(
        None,
        description='timm RandAugment config, e.g. "rand-m9-mstd0.5-inc1" (DeiT) or "rand-n2-m10" (AugReg).',
    )
    mixup: float = Field(0.0, ge=0.0, le=10.0, description="Mixup alpha (0: off).")
    cutmix: float = Field(0.0, ge=0.0, le=10.0, description="CutMix alpha (0: off).")
    mixup_prob: float = Field(1.0, ge=0.0, le=1.0, description="Share of batches mixed at all.")
    mixup_switch_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="With both on: share of mixed batches that use CutMix."
    )
    random_erasing: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of images with a random box erased."
    )
    # synthetic only: size of the generated dataset and its number of classes.
    synthetic_size: int = Field(2048, ge=16, le=1_000_000)
    synthetic_classes: int = Field(10, ge=2, le=10_000)

    @field_validator("augment", mode="before")
    @classmethod
    def _known_augment(cls, value: object) -> object:
        # Checked here so that a typo reads as one sentence, not as one failure per member of the union.
        if isinstance(value, bool | AugmentSpec) or (
            isinstance(value, str) and value in (*AUGMENT_PRESETS, "none")
        ):
            return value
        if isinstance(value, dict):
            try:
                return AugmentSpec.model_validate(value)
            except ValidationError as error:
                problems = "; ".join(
                    ": ".join([*(str(p) for p in item["loc"]), item["msg"].removeprefix("Value error, ")])
                    for item in error.errors()
                )
                raise ValueError(f"{problems} (augment is {AUGMENT_HELP})") from None
        raise ValueError(f"augment is {AUGMENT_HELP}, got {value!r}")

    @field_validator("rand_augment")
    @classmethod
    def _check_rand_augment(cls, value: str | None) -> str | None:
        if value is not None and RAND_AUGMENT_PATTERN.match(value) is None:
            raise ValueError(
                'must be a timm RandAugment string: "rand" then -m<magnitude>, -n<ops>, -mstd<std>, -mmax<max>, '
                f'-inc<0|1>, -p<prob> (e.g. "rand-m9-mstd0.5-inc1"), got {value!r}'
            )
        return value

    @property
    def mixes(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.dataset == "shards" and not self.root:
            raise ValueError(
                "dataset 'shards' reads packed shards: set data.root to the directory or http(s):// URL "
                "holding the index.json that `vitq data pack` wrote"
            )
        if self.dataset in FILE_DATASETS and not self.root:
            raise ValueError(f"dataset {self.dataset!r} reads files: set data.root to its directory")
        if self.dataset == "shards":
            assert self.root is not None
            if "://" in self.root and not self.root.startswith(SHARD_URL_SCHEMES):
                raise ValueError(
                    f"data.root {self.root!r}: shards are read from a directory or an http(s):// URL"
                )
            if self.download:
                raise ValueError("data.download is for the torchvision datasets; shards are made by pack")
            shard_pattern(self.root)  # a malformed pattern is refused at submit
        if self.decode == "device" and self.dataset not in DEVICE_DECODE_DATASETS:
            raise ValueError(
                f"decode: device reads encoded images of {' or '.join(DEVICE_DECODE_DATASETS)}, not {self.dataset}"
            )
        if self.decode == "device" and self.rand_augment is not None:
            raise ValueError(
                "decode: device cannot run rand_augment (timm's works on PIL images): use loader"
            )
        if isinstance(self.subset, float) and not 0.0 < self.subset <= 1.0:
            raise ValueError("subset as a fraction must be in (0, 1]")
        if isinstance(self.subset, int) and self.subset < 1:
            raise ValueError("subset as a count per class must be at least 1")
        return self


class OptimSpec(_Strict):
    """None means: the paper's default for the job's kind (see `JobSpec.resolved`)."""

    name: Literal["adamw", "sgd"] | None = None
    lr: float | None = Field(None, gt=0.0, le=10.0)
    weight_decay: float | None = Field(None, ge=0.0, le=10.0)
    betas: tuple[float, float] | None = None
    momentum: float | None = Field(None, ge=0.0, lt=1.0)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: Literal["linear", "cosine", "constant"] | None = None
    clip_grad_norm: float | None = Field(None, ge=0.0, description="0 disables clipping.")
    layer_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Layer-wise lr decay (BEiT, timm): block i of L trains at lr * layer_decay^(L - i); 1: off.",
    )


class TrainSpec(_Strict):
    steps: int = Field(
        1000,
        ge=0,
        le=10_000_000,
        description="0: train nothing, only evaluate the initial weights (a fine-tune's probe: frozen features).",
    )
    batch_size: PositiveInt = Field(128, le=1_000_000, description="Global batch across all processes.")
    micro_batch_size: PositiveInt | None = Field(
        None, description="Per-process batch per forward pass; accumulation reaches the global batch."
    )
    precision: Literal["fp32", "bf16", "fp8"] = Field(
        "fp32",
        description="fp8: Linear layers in float8 (torchao, Hopper GPUs and newer), the rest in bf16.",
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the model; auto: on CUDA (on the CPU compiling does not pay)."
    )
    eval_every: int = Field(0, ge=0, description="0: evaluate only at the end.")
    checkpoint_every: int = Field(0, ge=0, description="0: checkpoint only at the end.")
    keep_checkpoints: PositiveInt = Field(3, le=1000)
    log_every: PositiveInt = 10
    seed: int = Field(0, ge=0, le=2**31 - 1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Keep an exponential moving average of the weights (timm ModelEmaV3), evaluated and "
        "checkpointed next to them; e.g. 0.9998 (timm), 0.99996 (DeiT). None: no EMA.",
    )


class EvalSpec(_Strict):
    few_shot: list[Annotated[int, Field(ge=1, le=1000)]] = Field(default_factory=list, max_length=8)
    few_shot_l2: float = Field(1e-3, gt=0.0, description="Ridge strength of the closed-form linear probe.")
    batch_size: PositiveInt = Field(256, le=65536)


SIZE_PATTERN = r"^(\d+)([KMGTkmgt]?)[Bb]?$"  # a Slurm memory size: "8G", "512M", "1024" (megabytes)


def megabytes(size: str) -> int:
    """A Slurm size ("4G", "512M", "1024"; M without a unit) in megabytes."""
    match = re.match(SIZE_PATTERN, size.strip())
    if match is None:
        raise ValueError(f"{size!r} is not a size such as 4G or 512M")
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[match[2].upper()]
    return max(1, int(int(match[1]) * scale))


class SlurmSpec(_Strict):
    """For pools a Slurm dispatcher serves (`vitq slurm`; other executors ignore it): these win over the pool's."""

    time: str | None = Field(
        None,
        pattern=r"^(\d+-)?\d+(:\d+){0,2}$",
        description="Wall-time limit of each Slurm job (sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH); a longer "
        "run checkpoints before it and continues in a new Slurm job.",
    )
    account: str | None = Field(None, pattern=r"^[\w.\-]{1,64}$", description="sbatch --account")
    qos: str | None = Field(None, pattern=r"^[\w.\-]{1,64}$", description="sbatch --qos")
    cpus_per_task: int | None = Field(None, ge=1, le=1024, description="CPUs per training process")
    mem_per_task: str | None = Field(
        None,
        pattern=SIZE_PATTERN,
        description="Memory per training process, e.g. 8G (sbatch --mem: that times procs_per_node)",
    )

    def per_task(self, *, cpus: int | None, memory_mb: int | None) -> tuple[int | None, int | None]:
        """(CPUs, megabytes) per training process: this spec's, else the pool's (None: Slurm's default)."""
        mem = megabytes(self.mem_per_task) if self.mem_per_task else memory_mb
        return self.cpus_per_task or cpus, mem


class ResourcesSpec(_Strict):
    nodes: int = Field(1, ge=1, le=1024)
    procs_per_node: int = Field(1, ge=1, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    pool: str = Field(
        DEFAULT_POOL, pattern=r"^[\w.\-]{1,64}$", description="The group of workers that runs it."
    )
    priority: int = Field(
        0, ge=-1000, le=1000, description="Higher runs first; first come first served within."
    )
    slurm: SlurmSpec | None = None

    @property
    def gpus_per_node(self) -> int:
        """Devices the job takes on each node of a GPU worker: one per process, none for a CPU job."""
        return 0 if self.device == "cpu" else self.procs_per_node


class InitSpec(_Strict):
    from_job: int | None = Field(None, ge=1, description="Start from this job's checkpoint (service only).")
    checkpoint: str | None = Field(
        None, max_length=64, description="Which checkpoint of from_job; default latest."
    )
    weights: str | None = Field(
        None, max_length=4096, description="Run directory, checkpoint directory or weights file."
    )
    ema: bool = Field(False, description="Start from the checkpoint's EMA weights (train.ema_decay) instead.")

    @model_validator(mode="after")
    def _one_source(self) -> InitSpec:
        if (self.from_job is None) == (self.weights is None):
            raise ValueError("init needs exactly one of from_job or weights")
        if self.checkpoint is not None and self.from_job is None:
            raise ValueError("init.checkpoint names a checkpoint of init.from_job")
        return self


class JobSpec(_Strict):
    kind: Literal["pretrain", "finetune"]
    name: str = Field("unnamed", min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    optim: OptimSpec = OptimSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    resources: ResourcesSpec = ResourcesSpec()
    init: InitSpec | None = None
    recipe: str | None = Field(
        None,
        description="A named recipe (vit.recipes.RECIPES) whose values fill the fields the spec leaves out.",
    )

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str | None) -> str | None:
        if value is not None and value not in RECIPES:
            raise ValueError(f"unknown recipe {value!r}; known: {', '.join(RECIPES)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if self.init is not None and self.kind != "finetune":
            raise ValueError("init is for finetune jobs; a pretrain job starts from random weights")
        if self.train.steps == 0 and self.init is None:
            raise ValueError(
                "train.steps 0 only evaluates the initial weights: it needs init (from_job or weights)"
            )
        if self.train.precision == "fp8" and self.resources.device == "cpu":
            raise ValueError(
                "train.precision fp8 needs a GPU with float8 matmuls (Hopper or newer), not the CPU"
            )
        world = self.resources.nodes * self.resources.procs_per_node
        if self.train.batch_size % world:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is not divisible by {world} processes"
            )
        micro = self.train.micro_batch_size
        if micro is not None and (self.train.batch_size // world) % micro:
            raise ValueError(
                f"the per-process batch {self.train.batch_size // world} is not a multiple of micro_batch_size {micro}"
            )
        data = apply_recipe(self, RECIPES[self.recipe]).data if self.recipe is not None else self.data
        if data.mixes and (self.train.batch_size // world) % 2:
            raise ValueError(
                f"data.mixup/cutmix pair each image with another of its process's batch: the per-process batch "
                f"{self.train.batch_size // world} must be even"
            )
        return self

    def resolved(self) -> JobSpec:
        """The same spec with the recipe's values and every kind-dependent default filled in (idempotent).

        Fields the spec sets win over the recipe's, the recipe's over the kind's defaults."""
        spec = apply_recipe(self, RECIPES[self.recipe]) if self.recipe is not None else self
        defaults = PRETRAIN_OPTIM if spec.kind == "pretrain" else FINETUNE_OPTIM
        given = spec.optim.model_dump(exclude_none=True)
        optim = OptimSpec(**{**defaults, **given})
        if optim.name == "sgd" and optim.betas is not None and "betas" not in given:
            optim = optim.model_copy(update={"betas": None})
        return spec.model_copy(update={"optim": optim})

    @property
    def world_size(self) -> int:
        return self.resources.nodes * self.resources.procs_per_node


# Paper, section 3 / appendix B: Adam(0.9, 0.999), decoupled weight decay 0.1, linear warmup then linear decay.
PRETRAIN_OPTIM: dict[str, Any] = {
    "name": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.1,
    "betas": (0.9, 0.999),
    "momentum": None,
    "warmup_steps": 100,
    "schedule": "linear",
    "clip_grad_norm": 1.0,
    "layer_decay": 1.0,
}
# Paper, fine-tuning: SGD momentum 0.9, no weight decay, clip at global norm 1, cosine decay.
FINETUNE_OPTIM: dict[str, Any] = {
    "name": "sgd",
    "lr": 0.01,
    "weight_decay": 0.0,
    "momentum": 0.9,
    "warmup_steps": 50,
    "schedule": "cosine",
    "clip_grad_norm": 1.0,
    "layer_decay": 1.0,
}


def parse_spec_text(text: str) -> JobSpec:
    """Parse a YAML or JSON spec (JSON is YAML); raises pydantic.ValidationError or ValueError."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("a spec is a mapping with at least `kind: pretrain` or `kind: finetune`")
    return JobSpec.model_validate(data)


def load_spec(path: str | Path) -> JobSpec:
    return parse_spec_text(Path(path).read_text())
