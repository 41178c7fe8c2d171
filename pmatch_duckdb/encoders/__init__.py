"""Run-time encoders: ONNX Runtime sessions over verified model bundles (no torch here)."""

from .image import ImageEncoder
from .registry import get_image_encoder, get_text_encoder
from .text import TextEncoder

__all__ = ["ImageEncoder", "TextEncoder", "get_image_encoder", "get_text_encoder"]
