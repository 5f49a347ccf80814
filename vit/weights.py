"""Load pretrained weights into a `VisionTransformer`, and save ours in timm's layout.

Sources: timm-layout .safetensors and .pth/.pt files, the original JAX .npz checkpoints, a checkpoint directory
(holding model.safetensors) or a run directory (its checkpoints/latest names the newest checkpoint). Loading
adapts a checkpoint to the model: position embeddings are resampled to the model's grid and a head of another
shape is replaced by a zero-initialised one (the paper's fine-tuning rule). Nothing is ever unpickled beyond
tensors and plain containers.
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vit.model import VisionTransformer
from vit.rundir import EMA_WEIGHTS_FILE, WEIGHTS_FILE

StateDict = dict[str, torch.Tensor]
Grid = tuple[int, int]
HEAD_KEYS = ("head.weight", "head.bias")
# Wrappers that prefix every key: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    source: Path  # the file actually read
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint lacks (strict=False only)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks (strict=False only)
    # key -> (checkpoint grid, model grid), e.g. {"pos_embed": ((14, 14), (24, 24))}
    resized: dict[str, tuple[Grid, Grid]] = field(default_factory=dict)
    head_reset: bool = False  # the head was zero-initialised instead of loaded


def load_pretrained(
    model: VisionTransformer, path: str | Path, *, strict: bool = True, ema: bool = False
) -> LoadReport:
    """Load weights from `path` into `model` in place (ema: a checkpoint's EMA weights, ema.safetensors).

    Raises FileNotFoundError for a missing path and ValueError for a file that is not a ViT checkpoint, a patch
    size or width that differs from the model's, or (when strict) keys missing or left over besides the head."""
    source = resolve_weights_file(Path(path), ema=ema)
    state = read_state_dict(source)
    report = LoadReport(source=source)
    _check_patch_embedding(state, model)
    _resize_position_embedding(state, model, report)

    expected = model.state_dict()
    has_head = isinstance(model.head, nn.Linear)
    head_matches = all(k in state and state[k].shape == expected[k].shape for k in HEAD_KEYS if has_head)
    if not has_head or not head_matches:
        report.head_reset = has_head
        for key in HEAD_KEYS:
            state.pop(key, None)
    report.missing = sorted(set(expected) - set(state) - ({*HEAD_KEYS} if report.head_reset else set()))
    report.unexpected = sorted(set(state) - set(expected))
    if strict and (report.missing or report.unexpected):
        raise ValueError(
            f"{source} does not fit this model: missing {report.missing or 'none'}, "
            f"unexpected {report.unexpected or 'none'} (pass strict=False to load the rest)"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if mismatched:
        raise ValueError(f"{source} has a different architecture: " + "; ".join(mismatched))

    model.load_state_dict(state, strict=False)
    if report.head_reset:
        with torch.no_grad():
            for key in HEAD_KEYS:
                model.get_parameter(key).zero_()
    return report


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's weights to the file `path` as safetensors, with timm's key names."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in _strip_wrappers(model.state_dict()).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def resolve_weights_file(path: Path, *, ema: bool = False) -> Path:
    """A weights file itself, a checkpoint directory's model.safetensors, or a run directory's latest one (ema:
    ema.safetensors instead, the moving average a run with train.ema_decay saves next to the weights)."""
    weights = EMA_WEIGHTS_FILE if ema else WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}")
    if path.is_file():
        if ema:
            raise ValueError(f"{path} is a file: EMA weights are read from a checkpoint or run directory")
        return path
    if (path / weights).is_file():
        return path / weights
    if ema and (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {weights}: it was trained without train.ema_decay")
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        if not re.fullmatch(r"[\w.\-]+", name) or name in (".", ".."):
            raise ValueError(f"{latest} should name a checkpoint directory, holds {name!r}")
        checkpoint = path / "checkpoints" / name / weights
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{latest} names {name!r}, but {checkpoint} does not exist")
        return checkpoint
    raise ValueError(
        f"{path} is a directory without {weights} or checkpoints/latest: "
        "expected a checkpoint directory or a run directory"
    )


def read_state_dict(path: Path) -> StateDict:
    """The checkpoint at `path` as a timm-layout state dict (on CPU)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return _strip_wrappers(load_file(str(path)))
        if suffix in (".pth", ".pt", ".bin"):
            return _strip_wrappers(_unwrap(torch.load(path, map_location="cpu", weights_only=True), path))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return jax_to_timm({k: npz[k] for k in npz.files})
    except pickle.UnpicklingError as err:
        # torch's safe unpickler says "Unsupported global" / "Unsupported operand": keep only that detail.
        detail = str(err).partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0]
        raise ValueError(
            f"{path} is corrupt or holds objects other than tensors and plain containers: refusing to unpickle "
            f"it ({' '.join(detail.split()) or err})"
        ) from err
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, KeyError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable {suffix} checkpoint: {err}") from err
    raise ValueError(f"{path}: unknown weights format {suffix!r}; expected .safetensors, .pth, .pt or .npz")


def _unwrap(obj: object, path: Path) -> StateDict:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict of tensors (nor one under 'model' or 'state_dict')")
    return {str(k): v for k, v in obj.items()}


def _strip_wrappers(state: StateDict) -> StateDict:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def jax_to_timm(arrays: dict[str, np.ndarray]) -> StateDict:
    """Map the original JAX checkpoint layout (google-research/vision_transformer) to timm's keys.

    The pretraining representation layer (pre_logits) is dropped, and with it the head trained on top of it."""
    prefix = next((p for p in ("opt/target/", "params/") if f"{p}embedding/kernel" in arrays), "")
    if f"{prefix}embedding/kernel" not in arrays:
        raise ValueError(
            "not a ViT .npz checkpoint: no embedding/kernel (under opt/target/, params/ or none)"
        )
    a = {k.removeprefix(prefix): torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def linear(src: str, dst: str) -> None:
        kernel = a.pop(f"{src}/kernel")  # (in, out) or (in, heads, head_dim)
        out[f"{dst}.weight"] = kernel.reshape(kernel.shape[0], -1).T
        out[f"{dst}.bias"] = a.pop(f"{src}/bias").flatten()

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = a.pop(f"{src}/scale")
        out[f"{dst}.bias"] = a.pop(f"{src}/bias")

    out: StateDict = {}
    out["patch_embed.proj.weight"] = a.pop("embedding/kernel").permute(3, 2, 0, 1)  # (P,P,C,D) -> (D,C,P,P)
    out["patch_embed.proj.bias"] = a.pop("embedding/bias")
    out["cls_token"] = a.pop("cls")
    out["pos_embed"] = a.pop("Transformer/posembed_input/pos_embedding")
    norm("Transformer/encoder_norm", "norm")
    if any(k.startswith("pre_logits/") for k in a):
        # The head was trained on top of pre_logits: dropping that layer makes the head meaningless too.
        for key in [k for k in a if k.startswith(("pre_logits/", "head/"))]:
            del a[key]
    elif "head/kernel" in a:
        linear("head", "head")
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in a:
        src, dst = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        attn = f"{src}/MultiHeadDotProductAttention_1"
        norm(f"{src}/LayerNorm_0", f"{dst}.norm1")
        qkv = [a.pop(f"{attn}/{name}/kernel") for name in ("query", "key", "value")]  # (D, heads, head_dim)
        out[f"{dst}.attn.qkv.weight"] = torch.cat([k.reshape(k.shape[0], -1).T for k in qkv])  # (3D, D)
        out[f"{dst}.attn.qkv.bias"] = torch.cat(
            [a.pop(f"{attn}/{n}/bias").flatten() for n in ("query", "key", "value")]
        )
        proj = a.pop(f"{attn}/out/kernel")  # (heads, head_dim, D)
        out[f"{dst}.attn.proj.weight"] = proj.reshape(-1, proj.shape[-1]).T
        out[f"{dst}.attn.proj.bias"] = a.pop(f"{attn}/out/bias")
        norm(f"{src}/LayerNorm_2", f"{dst}.norm2")
        linear(f"{src}/MlpBlock_3/Dense_0", f"{dst}.mlp.fc1")
        linear(f"{src}/MlpBlock_3/Dense_1", f"{dst}.mlp.fc2")
        i += 1
    out.update({f"npz:{k}": v for k, v in a.items()})  # anything left is reported as unexpected
    return {k: v.contiguous() for k, v in out.items()}


def _check_patch_embedding(state: StateDict, model: VisionTransformer) -> None:
    weight = state.get("patch_embed.proj.weight")
    patch = model.cfg.patch_size
    if weight is not None and tuple(weight.shape[-2:]) != (patch, patch):
        raise ValueError(
            f"the checkpoint uses {weight.shape[-2]}x{weight.shape[-1]} patches but the model {patch}x{patch}: "
            f"build the model with patch_size {weight.shape[-1]} (e.g. variant '.../{weight.shape[-1]}')"
        )


def _resize_position_embedding(state: StateDict, model: VisionTransformer, report: LoadReport) -> None:
    pos = state.get("pos_embed")
    if pos is None or pos.shape == model.pos_embed.shape:
        return
    if pos.ndim != 3 or pos.shape[-1] != model.pos_embed.shape[-1]:
        raise ValueError(
            f"pos_embed of shape {tuple(pos.shape)} does not fit the model's {tuple(model.pos_embed.shape)}"
        )
    old = math.isqrt(pos.shape[1] - 1)
    if old * old != pos.shape[1] - 1:
        raise ValueError(
            f"pos_embed has {pos.shape[1] - 1} patch positions: not a square grid (+ class token)"
        )
    new = model.cfg.grid_size
    state["pos_embed"] = resize_pos_embed(pos, (new, new))
    report.resized["pos_embed"] = ((old, old), (new, new))


def resize_pos_embed(pos_embed: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(1, 1 + h*w, D) with a square h*w grid -> (1, 1 + grid[0]*grid[1], D), bicubic in 2D; cls slot kept.

    The same numbers as timm's `resample_abs_pos_embed` (bicubic with antialias), so a fine-tune from timm
    weights starts where timm's own would."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(patches.shape[1])
    if (old, old) == tuple(grid):
        return pos_embed
    dim = patches.shape[-1]
    image = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()  # (1, D, h, w)
    # size=, not scale_factor: a fractional factor rounds to a wrong output size. antialias selects PIL's cubic
    # kernel (a = -0.5) even when upsampling, where plain bicubic uses a = -0.75: timm passes it, so do we.
    image = F.interpolate(
        image, size=grid, mode="bicubic", align_corners=False, antialias=True
    )  # (1, D, H, W)
    patches = image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat((cls, patches), dim=1)
