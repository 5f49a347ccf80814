"""vitq's Vision Transformer: the model, pretrained-weight loading and the trainer."""

from vit.model import VisionTransformer, create_model

__all__ = ["VisionTransformer", "create_model"]
