"""Per-family builders of the tiny zoo: processor (tokenizer, image processor / feature extractor,
chat template) and config, with the config's modality token ids read from the tokenizer, for every
family (:data:`BUILDERS`, in :data:`FAMILIES` order). The builders live in
:mod:`mech.testing.tiny_llava_qwen` and :mod:`mech.testing.tiny_other_families`, their shared sizes in
:mod:`mech.testing.tiny_configs`, the torchvision-free video slot in :mod:`mech.testing.tiny_video`.
Public entry points live in :mod:`mech.testing.tiny`."""

from __future__ import annotations

from . import tiny_llava_qwen, tiny_other_families
from .tiny_configs import AUDIO_SECONDS, IMAGE_SIZES, FamilyBuilder
from .tiny_video import NoVideoProcessor, video_slot_ok

__all__ = [
    "AUDIO_SECONDS",
    "BUILDERS",
    "FAMILIES",
    "IMAGE_SIZES",
    "FamilyBuilder",
    "NoVideoProcessor",
    "video_slot_ok",
]

#: family -> its builder, in the zoo's order (the LLaVA and Qwen-VL families first)
BUILDERS: dict[str, FamilyBuilder] = {**tiny_llava_qwen.BUILDERS, **tiny_other_families.BUILDERS}

FAMILIES: tuple[str, ...] = tuple(BUILDERS)
