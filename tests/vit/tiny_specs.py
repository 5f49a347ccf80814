"""The tiny model and data the trainer tests share: a training run takes seconds on one CPU thread."""

from __future__ import annotations

from typing import Any

TINY_MODEL: dict[str, Any] = {
    "variant": "Ti/4",
    "image_size": 16,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "mlp_dim": 64,
}
SYNTHETIC: dict[str, Any] = {
    "dataset": "synthetic",
    "synthetic_size": 160,
    "synthetic_classes": 4,
    "num_workers": 0,
}
