"""The Vision Transformer (Dosovitskiy et al. 2020), in one file.

State-dict keys and numerics match timm's `VisionTransformer` (cls pooling, and gap pooling with
`global_pool="avg"`), so timm-format checkpoints load with `load_state_dict(strict=True)` and our checkpoints
load into timm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vit.config import PRESETS, VARIANT_PATTERN


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000  # 0: no head, forward() returns pooled features
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    # "cls": head on the class token after the final norm. "gap": mean of the patch tokens, then a norm
    # (timm's global_pool="avg": the final norm moves after pooling and is named fc_norm).
    pool: Literal["cls", "gap"] = "cls"
    # Paper: dropout after every dense layer except qkv, and after adding position embeddings.
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    # Stochastic depth (Huang et al. 2016): each block's residual branches are dropped per sample, at a rate
    # rising linearly from 0 (first block) to drop_path_rate (last), as timm's VisionTransformer does.
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6  # the JAX reference's LayerNorm epsilon; timm uses the same

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pool not in ("cls", "gap"):
            raise ValueError(f'pool must be "cls" or "gap", got {self.pool!r}')
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if min(self.patch_size, self.embed_dim, self.depth, self.num_heads, self.mlp_dim) < 1:
            raise ValueError("patch_size, embed_dim, depth, num_heads and mlp_dim must be positive")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2 + 1  # patches + the class token


OVERRIDES = frozenset(
    {
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_dim",
        "pool",
        "drop_rate",
        "attn_drop_rate",
        "drop_path_rate",
    }
)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.attn_drop_rate = cfg.attn_drop_rate
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)  # fused q, k, v (timm's layout: q rows first)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # Views only: SDPA takes these strides as they are. Unbinding dim 2 (timm permutes it to the front first)
        # lets backward stack dq, dk, dv straight into qkv's contiguous layout: one copy fewer.
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)  # (B, N, 3, heads, head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # 3 x (B, heads, N, head_dim)
        dropout_p = self.attn_drop_rate if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.act = nn.GELU()  # exact (erf), as timm; the JAX reference uses the tanh form (a tiny difference)
        self.drop1 = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)
        self.drop2 = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))  # (B, N, mlp_dim) inside


class DropPath(nn.Module):
    """Zero a sample's residual branch with probability p, scale the kept ones by 1/(1-p). The same draws as
    timm's DropPath (one bernoulli_ per sample, on the branch's device), so seeded runs match timm's exactly."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)  # (B, 1, 1)
        return x * mask


class Block(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x)); each branch under stochastic depth."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # (B, N-1, D)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_features = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.embed_dim))  # includes the cls slot
        self.pos_drop = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        # timm's linear rule over depth; on the CPU, also when the model is built on the meta device.
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[Block(cfg, rate) for rate in rates])
        gap = cfg.pool == "gap"
        self.norm: nn.Module = nn.Identity() if gap else nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.fc_norm: nn.Module = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if gap else nn.Identity()
        self.head: nn.Module = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        def trunc_normal(t: torch.Tensor, std: float) -> None:
            # trunc_normal_'s bounds are absolute values, not multiples of std.
            nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)

        trunc_normal(self.pos_embed, 0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        proj = self.patch_embed.proj
        trunc_normal(proj.weight, math.sqrt(1.0 / (proj.in_channels * self.cfg.patch_size**2)))  # LeCun
        nn.init.zeros_(proj.bias)  # type: ignore[arg-type]
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                trunc_normal(module.weight, 0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for norm in (self.norm, self.fc_norm):
            if isinstance(norm, nn.LayerNorm):
                norm.reset_parameters()
        if isinstance(self.head, nn.Linear):
            # Zero head, as the reference code (big_vision): every class starts at equal logits.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping (timm.optim's layer-wise lr decay reads it): the embeddings are layer 0, block i
        layer i + 1 (the final norm goes with the last block), the head alone on top."""
        return {
            "stem": r"^cls_token|pos_embed|patch_embed",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, N+1, D) tokens, class token first. With cls pooling the tokens are
        normed; with gap the norm follows the pooling (in forward_head), as in timm."""
        x = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat((cls, x), dim=1) + self.pos_embed  # (B, N+1, D)
        x = self.blocks(self.pos_drop(x))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(dim=1) if self.cfg.pool == "gap" else x[:, 0]  # (B, D)
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def model_config(variant: str, *, num_classes: int, image_size: int, **overrides: Any) -> ViTConfig:
    """The config for a named variant ("B/16", "Ti/4"), with overrides of the preset."""
    match = VARIANT_PATTERN.match(variant)
    if match is None:
        raise ValueError(
            f'variant must look like "B/16" (one of {", ".join(PRESETS)}, "/", a patch size), got {variant!r}'
        )
    unknown = sorted(set(overrides) - OVERRIDES)
    if unknown:
        raise TypeError(f"unknown create_model overrides {unknown}; accepted: {sorted(OVERRIDES)}")
    depth, embed_dim, mlp_dim, num_heads = PRESETS[match.group(1)]
    cfg = ViTConfig(
        image_size=image_size,
        patch_size=int(match.group(2)),
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
    )
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def create_model(variant: str, *, num_classes: int, image_size: int, **overrides: Any) -> VisionTransformer:
    """Build a ViT by variant name, e.g. create_model("Ti/4", num_classes=10, image_size=32, depth=6).

    Overrides: patch_size, embed_dim, depth, num_heads, mlp_dim, pool ("cls" | "gap"), drop_rate,
    attn_drop_rate, drop_path_rate (None leaves the preset's value)."""
    return VisionTransformer(
        model_config(variant, num_classes=num_classes, image_size=image_size, **overrides)
    )
