"""vitq's Vision Transformer: the model, pretrained-weight loading and the trainer.

The public names load lazily (PEP 562): `import vit.config`, which the API and the CLI do on every request and
start-up, must not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vit.model import VisionTransformer, create_model
    from vit.weights import LoadReport, load_pretrained

__all__ = ["LoadReport", "VisionTransformer", "create_model", "load_pretrained"]

_SOURCES = {
    "LoadReport": "vit.weights",
    "VisionTransformer": "vit.model",
    "create_model": "vit.model",
    "load_pretrained": "vit.weights",
}


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'vit' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
