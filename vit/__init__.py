"""vitq's Vision Transformer: the model, pretrained-weight loading and the trainer."""

from vit.model import VisionTransformer, create_model
from vit.weights import LoadReport, load_pretrained

__all__ = ["LoadReport", "VisionTransformer", "create_model", "load_pretrained"]
