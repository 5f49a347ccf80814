"""How many parameters a ViT has, from its shape alone: the API bounds a job's model at submit without importing
torch or building the model. vit.model builds exactly these tensors (tests/vit/test_model_size.py counts both)."""

from __future__ import annotations

from vit.config import DATASET_CLASSES, PRESETS, VARIANT_PATTERN, DataSpec, ModelSpec


def parameter_count(
    *,
    image_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    mlp_dim: int,
    num_classes: int,
    in_chans: int = 3,
) -> int:
    """The parameters of vit.model.VisionTransformer with this shape (weights and biases alike)."""
    d, m = embed_dim, mlp_dim
    patch_embed = in_chans * patch_size**2 * d + d  # the patch convolution
    tokens = (
        d + ((image_size // patch_size) ** 2 + 1) * d
    )  # class token, position embeddings (class slot included)
    layer_norm = 2 * d
    attention = (3 * d * d + 3 * d) + (d * d + d)  # qkv, proj
    mlp = (d * m + m) + (m * d + d)  # fc1, fc2
    block = 2 * layer_norm + attention + mlp
    head = d * num_classes + num_classes if num_classes else 0
    # One LayerNorm after the blocks either way: `norm` with cls pooling, `fc_norm` with gap.
    return patch_embed + tokens + depth * block + layer_norm + head


def model_parameters(model: ModelSpec, *, num_classes: int) -> int:
    """The parameters of the model a spec's `model` section builds (its preset with the overrides applied)."""
    match = VARIANT_PATTERN.match(model.variant)
    assert match is not None  # ModelSpec checked it
    depth, embed_dim, mlp_dim, _ = PRESETS[match.group(1)]
    return parameter_count(
        image_size=model.image_size,
        patch_size=model.patch_size or int(match.group(2)),
        embed_dim=model.embed_dim or embed_dim,
        depth=model.depth or depth,
        mlp_dim=model.mlp_dim or mlp_dim,
        num_classes=num_classes,
    )


def known_classes(data: DataSpec) -> int | None:
    """The dataset's class count where the spec alone says it; None where only its files do (image folders,
    shards)."""
    if data.dataset == "synthetic":
        return data.synthetic_classes
    return DATASET_CLASSES.get(data.dataset)
