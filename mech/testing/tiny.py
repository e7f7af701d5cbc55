"""Tiny random-weight multimodal models of every family mech supports, built offline.

Each model is the real transformers ``*ForConditionalGeneration`` class built from its real config
class, and comes with the family's real processor class holding a real image processor (the PIL
variant; no torchvision) or feature extractor, a word-level tokenizer (:mod:`.tiny_tokenizer`) and a
chat template shaped like the family's real one (:mod:`.tiny_templates`). The config's modality
token ids equal the tokenizer's ids. Text decoders have hidden size 32, 2 layers (Qwen3-VL: 3,
Mllama: 3 with one cross-attention layer), 4 query heads and 2 KV heads; vocabularies are a few
hundred words. A model is well under 1 MB and builds in milliseconds.

Families (key = ``config.model_type``), image size fed by :func:`tiny_inputs` -> tokens per image:

family         model / vision + text                     image tokens per image (tiny_inputs image)
llava          CLIP-ViT + MLP + Llama                    32x32, patch 8 -> 16 ``<image>``
llava_next     CLIP-ViT + MLP + Llama, anyres            64x48 -> 70 ``<image>`` (base 16 + unpadded grid + newlines)
llava_onevision SigLIP + MLP + Qwen2, anyres_max_9      64x48 -> 70 ``<image>``; 17 per image when >1 image
qwen2_vl       Qwen2-VL ViT (patch 8, merge 2) + M-RoPE  48x32 -> 6 ``<|image_pad|>`` in vision_start/end
qwen2_5_vl     Qwen2.5-VL window ViT + M-RoPE            48x32 -> 6 ``<|image_pad|>``
qwen3_vl       Qwen3-VL ViT + deepstack [0, 1] + 3 layers 48x32 -> 6 ``<|image_pad|>``
gemma3         SigLIP + avg-pool + Gemma3 (sliding/full) 64x64 -> 16 ``<image_soft_token>`` in boi/eoi
internvl       InternViT + pixel-shuffle + Qwen2         64x64 -> 16 ``<IMG_CONTEXT>`` in <img>/</img>
idefics3       SigLIP + pixel-shuffle + Llama, splitting 64x64 -> 2x2 tiles + global, 4 tokens each (20)
smolvlm        as idefics3 with ChatML-ish template      64x64 -> 20 ``<image>``
paligemma      SigLIP + linear + Gemma (prefix-LM)       32x32 -> 16 ``<image>`` before <bos>
qwen2_audio    Whisper-style encoder + Qwen2             0.5 s of 16 kHz audio -> 12 ``<|AUDIO|>``
mllama         tiled ViT + cross-attention Llama         32x32 (1 tile) -> 1 ``<|image|>`` (cross-attn)

Video tokens exist in the tokenizers and configs of the video-capable families, but their video
processors need torchvision; a stand-in (``tiny_video.NoVideoProcessor``) fills the processor slot and
refuses to run. It saves as the family's real video processor class, so a :func:`save_tiny`
directory reads like a real checkpoint (``mech.load`` of it leaves the video part out without
torchvision; ``tests/test_load_dirs.py``).

Modules: ``tiny`` (this: public API), ``tiny_families`` (every family's processor + config builder:
``tiny_llava_qwen``, ``tiny_other_families``; their sizes: ``tiny_configs``), ``tiny_video`` (the video
processor slot without torchvision), ``tiny_tokenizer`` (word-level tokenizers), ``tiny_templates``
(chat templates).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers as T
from transformers import BatchFeature

from .tiny_families import AUDIO_SECONDS, BUILDERS, FAMILIES, IMAGE_SIZES, FamilyBuilder, video_slot_ok

__all__ = ["FAMILIES", "IMAGE_SIZES", "tiny_inputs", "tiny_model", "tiny_processor"]


def _family(family: str) -> FamilyBuilder:
    if family not in BUILDERS:
        raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
    return BUILDERS[family]


def tiny_processor(family: str) -> T.ProcessorMixin:
    """The family's real processor class with a tiny tokenizer, image processor and chat template."""
    with video_slot_ok():
        return _family(family).build_processor()


def tiny_model(family: str, *, seed: int = 0, attn_implementation: str = "sdpa"):
    """``(model, processor)``: a random-weight ``*ForConditionalGeneration`` (eval, fp32) and its processor."""
    fam = _family(family)
    proc = tiny_processor(family)
    config = fam.build_config(proc)
    assert config.model_type == family, (config.model_type, family)
    torch.manual_seed(seed)
    model = getattr(T, fam.model_class)._from_config(
        config, attn_implementation=attn_implementation, dtype=torch.float32
    )
    _randomize_dead_weights(model, seed)
    return model.eval(), proc


def _randomize_dead_weights(model, seed: int, std: float = 0.02) -> None:
    """Give random values to the weight matrices a family initialises to exactly zero.

    Some families zero a weight matrix that only pretrained weights fill: Gemma 3's
    ``mm_input_projection_weight`` (``Gemma3PreTrainedModel._init_weights``) maps every image to the zero
    vector, so a random-weight model would never see its image and no instrument could be tested on it.
    Every floating parameter with two or more axes that is all zero gets N(0, ``std``) from a generator
    seeded by ``seed`` (1-D parameters, norms and gates whose zero is meaningful, are left alone).
    """
    gen = torch.Generator().manual_seed(10_007 + seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and p.dtype.is_floating_point and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


def _image(seed: int, size: tuple[int, int]):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _audio(seed: int, sr: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(AUDIO_SECONDS * sr))).astype(np.float32)


def tiny_inputs(
    family: str,
    processor,
    *,
    n_images: int = 1,
    prompt: str = "what colour is the shape ?",
    batch: int = 1,
    padding_side: str | None = None,
) -> BatchFeature:
    """What ``model(**inputs)`` takes: ``batch`` chat prompts with ``n_images`` seeded random images each
    (audio clips for qwen2_audio), through ``apply_chat_template`` then ``processor(...)``.

    Sample ``b`` carries ``b`` extra words (``"please " * b``) so that a batch needs padding.
    """
    audio = family == "qwen2_audio"
    kind = "audio" if audio else "image"
    texts, media = [], []
    for b in range(batch):
        words = ("please " * b) + prompt
        content = [{"type": kind} for _ in range(n_images)] + [{"type": "text", "text": words}]
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        if audio:
            sr = processor.feature_extractor.sampling_rate
            media += [_audio(1000 * b + i, sr) for i in range(n_images)]
        else:
            media.append([_image(1000 * b + i, IMAGE_SIZES[family]) for i in range(n_images)])
    kwargs = dict(text=texts, return_tensors="pt", padding=True)
    if padding_side is not None:
        kwargs["padding_side"] = padding_side
    if n_images:
        if audio:
            kwargs["audio"] = media
            kwargs["sampling_rate"] = processor.feature_extractor.sampling_rate
        else:
            kwargs["images"] = media
    out = processor(**kwargs)
    out.pop("labels", None)  # PaliGemma's backwards-compatible training labels
    return out


def tiny_float64(family: str, *, batch: int = 2):
    """``(mech model, inputs)``: the tiny ``family`` model and a ``batch`` of :func:`tiny_inputs` in float64,
    for oracles that compare to rounding."""
    import mech

    model, processor = tiny_model(family)
    m = mech.load((model.to(torch.float64), processor))
    inputs = m.inputs(tiny_inputs(family, processor, batch=batch))
    return m, inputs.to(torch.float64)  # floating-point inputs only


def save_tiny(family: str, folder, *, seed: int = 0):
    """Save the tiny ``family`` model and its processor into ``folder`` (what ``mech.load(dir)``
    and ``from_pretrained`` read); returns ``folder``."""
    model, processor = tiny_model(family, seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


#: option lists of :func:`save_tiny_jsonl` (words in the tiny tokenizer's vocabulary)
TINY_OPTIONS = (("red", "blue", "green"), ("circle", "square", "triangle"), ("star", "heart", "cross"))


def save_tiny_jsonl(folder, questions, *, image_size: int = 32):
    """Write ``folder/data.jsonl`` in mech's jsonl schema (``id``, ``question``, ``image`` (a PNG
    beside it, seeded random pixels), ``options``, ``answer`` letter), one row per question, with
    options cycling through :data:`TINY_OPTIONS`; returns the path."""
    import json
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    rows = []
    for i, q in enumerate(questions):
        img = np.random.default_rng(i).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(img, "RGB").save(folder / f"im{i}.png")
        rows.append(
            {
                "id": f"q{i}",
                "question": q,
                "image": f"im{i}.png",
                "options": list(TINY_OPTIONS[i % 3]),
                "answer": "ABC"[i % 3],
            }
        )
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
