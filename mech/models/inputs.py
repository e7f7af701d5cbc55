"""Turning images and prompts (or raw processor outputs) into model inputs with token groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import BatchFeature

from mech.errors import ConfigError, InputError, ProcessorError
from mech.groups import TokenGroups, compute_groups

if TYPE_CHECKING:
    from mech.models.load import MechModel

MM_TYPE = {"image": 1, "video": 2, "audio": 3}  # transformers' mm_token_type_ids codes


class Inputs(BatchFeature):
    """What ``model(**inputs)`` takes, plus the token groups of every position.

    ``inputs.groups`` (:class:`~mech.groups.TokenGroups`) and ``inputs.prompts`` are attributes,
    not keys, so ``model(**inputs)`` works unchanged.
    """

    groups: TokenGroups | None = None
    prompts: list[list[str]] | None = None


def load_image(image: Any) -> Image.Image:
    """An RGB ``PIL.Image`` from a PIL image, a path, or an ``[H, W, 3]`` uint8 array.

    Raises:
        InputError: missing file, a file that is not an image, or an array of the wrong shape.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise InputError(f"image file {str(path)!r} does not exist; pass an existing path or a PIL.Image.")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{str(path)!r} is not a readable image ({exc}); pass a PNG/JPEG file or a PIL.Image.") from exc
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise InputError(f"image array must be [height, width, 3] uint8; got shape {image.shape}.")
        return Image.fromarray(image.astype(np.uint8))
    raise InputError(f"cannot read an image from {type(image).__name__}; pass a PIL.Image, a path or an array.")


def _per_sample(images: Any, batch: int) -> list[list[Image.Image]]:
    if images is None:
        return [[] for _ in range(batch)]
    if not isinstance(images, (list, tuple)):
        images = [images]
    if batch == 1 and not any(isinstance(x, (list, tuple)) for x in images):
        images = [list(images)]
    if len(images) != batch:
        raise InputError(f"{len(images)} image entries for {batch} prompts; pass one entry (an image, a list of "
                         "images, or None) per prompt.")
    out = []
    for entry in images:
        if entry is None:
            out.append([])
        elif isinstance(entry, (list, tuple)):
            out.append([load_image(x) for x in entry])
        else:
            out.append([load_image(entry)])
    return out


def _placeholder(processor: Any) -> str | None:
    return getattr(processor, "image_token", None)


def prepare(
    m: MechModel,
    images: Any,
    prompts: str | Sequence[str],
    *,
    chat_template: bool = True,
    padding_side: str | None = None,
) -> Inputs:
    """Apply the processor's chat template and processor to images and prompts.

    Args:
        m: the loaded model.
        images: per prompt an image, a list of images, or None; an image is a ``PIL.Image``, a
            path or an ``[H, W, 3]`` uint8 array. With one prompt, a bare list means its images.
        prompts: one prompt or a list (the batch).
        chat_template: wrap each prompt as a user turn with one image entry per image and add the
            generation prompt. With False the prompt is used as written and must already hold one
            image placeholder per image.
        padding_side: ``"left"``/``"right"``; default: the family table's.

    Returns:
        :class:`Inputs` with ``input_ids [batch, pos]``, ``attention_mask``, the family's extra
        inputs, and ``.groups`` (text found by matching the prompts).

    Raises:
        ProcessorError: ``m`` has no processor.
        InputError: image count differs from the placeholders, unreadable image, empty batch.
        ConfigError: ``padding_side`` other than ``"left"``/``"right"``.
    """
    proc = m.processor
    if proc is None:
        raise ProcessorError("this model was loaded without a processor, so raw images and prompts cannot be "
                             "prepared. Load with mech.load((model, processor)) or a directory holding the "
                             "processor files, or pass already-tokenized inputs to the instruments.")
    if padding_side not in (None, "left", "right"):
        raise ConfigError(f"padding_side={padding_side!r}; allowed: 'left', 'right' (or None for the family's).")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InputError("no prompts given; pass at least one prompt.")
    per = _per_sample(images, len(prompts))
    token = _placeholder(proc)
    texts, segments = [], []
    for prompt, imgs in zip(prompts, per):
        inline = token is not None and token in prompt
        segments.append([s for s in (prompt.split(token) if inline else [prompt]) if s.strip()])
        if chat_template and not inline:
            if getattr(proc, "chat_template", None) is None:
                raise ProcessorError("the processor has no chat template; pass chat_template=False with the "
                                     f"image placeholder {token!r} written in each prompt.")
            content = [{"type": "image"} for _ in imgs] + [{"type": "text", "text": prompt}]
            text = proc.apply_chat_template([{"role": "user", "content": content}],
                                            add_generation_prompt=True, tokenize=False)
        else:
            text = prompt
        found = text.count(token) if token else 0
        if token and found != len(imgs):
            raise InputError(f"{len(imgs)} image(s) but {found} image placeholder(s) {token!r} in the prompt "
                             f"{prompt[:60]!r}; give one image per placeholder.")
        texts.append(text)
    flat = [im for imgs in per for im in imgs]
    tok = getattr(proc, "tokenizer", None)
    side = padding_side or m.arch.table.padding_side
    old_side = getattr(tok, "padding_side", None)
    try:
        if tok is not None:
            tok.padding_side = side
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if flat:
            kwargs["images"] = per
        out = proc(**kwargs)
    except ValueError as exc:
        raise InputError(f"the processor rejected the inputs: {exc}. Check that every image has a placeholder.") from exc
    finally:
        if tok is not None and old_side is not None:
            tok.padding_side = old_side
    out.pop("labels", None)  # PaliGemma's processor adds training labels; model(**inputs) would compute a loss
    inputs = Inputs(dict(out))
    complete_inputs(m, inputs)
    inputs.prompts = segments
    inputs.groups = compute_groups(m.arch, inputs["input_ids"], inputs.get("attention_mask"), tok, segments)
    return inputs


def complete_inputs(m: MechModel, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    """Add the inputs the family needs that a caller may have left out (``derived_inputs``).

    ``"modality_codes"`` rebuilds ``mm_token_type_ids`` (0 text, 1 image, 2 video, 3 audio) from
    ``input_ids`` exactly as transformers' processors do, so M-RoPE positions stay the model's
    own; ``"image_is_one"`` rebuilds Gemma3's ``token_type_ids`` (1 at image tokens).
    """
    ids = inputs["input_ids"]
    for key, scheme in m.arch.table.derived_inputs.items():
        if key in inputs:
            continue
        types = torch.zeros_like(ids)
        for name, tok in m.arch.modality_ids.items():
            if scheme == "modality_codes" or name == "image":
                types[ids == tok] = MM_TYPE[name] if scheme == "modality_codes" else 1
        inputs[key] = types  # type: ignore[index]
    return inputs


def as_inputs(m: MechModel, inputs: Mapping[str, Any]) -> Inputs:
    """Accept ``prepare`` outputs or raw processor outputs (``model(**inputs)`` style).

    Returns an :class:`Inputs` on the model's device with derived inputs added and ``.groups``
    set (computed from the token ids when the caller's inputs carry none).

    Raises:
        InputError: no ``input_ids``, or ``input_ids`` not ``[batch, pos]``.
    """
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise InputError("inputs must be a mapping with 'input_ids' (what model(**inputs) takes); "
                         "use m.prepare(images, prompts) to make one.")
    groups = getattr(inputs, "groups", None)
    prompts = getattr(inputs, "prompts", None)
    out = Inputs({k: v for k, v in inputs.items()})
    if out["input_ids"].dim() != 2:
        raise InputError(f"input_ids must be [batch, pos]; got shape {tuple(out['input_ids'].shape)}.")
    complete_inputs(m, out)
    out.to(m.device) if m.device is not None else None
    if groups is None:
        tok = getattr(m.processor, "tokenizer", None) if m.processor is not None else None
        groups = compute_groups(m.arch, out["input_ids"], out.get("attention_mask"), tok, prompts)
    out.groups, out.prompts = groups.to(out["input_ids"].device), prompts
    return out
