"""The sizes of the tiny zoo and the config pieces every family's builder starts from: a 2-layer text
model of width :data:`H`, a 2-layer vision tower, the images' sizes per family, and
:class:`FamilyBuilder` (processor, config and model class of one family). Used by
:mod:`mech.testing.tiny_llava_qwen` and :mod:`mech.testing.tiny_other_families`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import transformers as T

__all__ = [
    "AUDIO_SECONDS",
    "IMAGE_SIZES",
    "TEXT",
    "VIS",
    "FamilyBuilder",
    "H",
    "clip_config",
    "ids_of",
    "siglip_config",
    "text_config",
    "vocab_size",
]

H = 32  # text hidden size
TEXT = dict(
    hidden_size=H,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
VIS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)

# (width, height) of the images tiny_inputs makes per family
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "llava": (32, 32),
    "llava_next": (64, 48),
    "llava_onevision": (64, 48),
    "qwen2_vl": (48, 32),
    "qwen2_5_vl": (48, 32),
    "qwen3_vl": (48, 32),
    "gemma3": (64, 64),
    "internvl": (64, 64),
    "idefics3": (64, 64),
    "smolvlm": (64, 64),
    "paligemma": (32, 32),
    "mllama": (32, 32),
}
AUDIO_SECONDS = 0.5


@dataclass(frozen=True)
class FamilyBuilder:
    build_processor: Callable[[], T.ProcessorMixin]
    build_config: Callable[[T.ProcessorMixin], T.PretrainedConfig]
    model_class: str


def ids_of(tok, **names: str) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


def vocab_size(proc) -> int:
    return len(proc.tokenizer)


def text_config(proc, **extra) -> dict:
    tok = proc.tokenizer
    d = dict(
        TEXT,
        vocab_size=vocab_size(proc),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    d.update(extra)
    return d


def clip_config(image_size: int, patch: int = 8) -> dict:
    return dict(VIS, image_size=image_size, patch_size=patch, model_type="clip_vision_model")


def siglip_config(image_size: int, patch: int = 8) -> dict:
    return dict(VIS, image_size=image_size, patch_size=patch, model_type="siglip_vision_model")
