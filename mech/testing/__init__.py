"""Test helpers: a zoo of tiny random-weight multimodal models (see :mod:`mech.testing.tiny`)."""

from .tiny import FAMILIES, IMAGE_SIZES, save_tiny, tiny_inputs, tiny_model, tiny_processor

__all__ = ["FAMILIES", "IMAGE_SIZES", "save_tiny", "tiny_inputs", "tiny_model", "tiny_processor"]
