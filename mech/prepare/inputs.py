"""Turning images and prompts (or raw processor outputs) into model inputs with token groups.

:func:`prepare` renders and tokenizes images and prompts, :func:`as_inputs` accepts a processor's
outputs; both return the frozen record :class:`~mech.prepare.record.Inputs` (re-exported here, with
the data-fit checks of :mod:`mech.prepare.fit`). ``m`` is a :class:`mech.models.load.MechModel`,
annotated ``Any``: loading imports this module (``MechModel.prepare``), never the reverse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from mech.errors import ConfigError, InputError, ProcessorError
from mech.prepare.fit import (
    FitWarning,
    check_data_fit,
    check_length,
    check_vocabulary,
    image_refusal,
    max_positions,
)
from mech.prepare.groups import compute_groups
from mech.prepare.images import read_image
from mech.prepare.record import RECORD_FIELDS, Inputs
from mech.prepare.spans import inline_spans, recording, render_user_turn, rendered_rows

# the data-fit checks (mech.prepare.fit) and Inputs (mech.prepare.record) are re-exported: their home before
__all__ = [
    "MM_TYPE",
    "FitWarning",
    "Inputs",
    "as_inputs",
    "check_data_fit",
    "check_length",
    "check_vocabulary",
    "complete_inputs",
    "image_refusal",
    "load_image",
    "max_positions",
    "prepare",
]

MM_TYPE = {"image": 1, "video": 2, "audio": 3}  # transformers' mm_token_type_ids codes


def load_image(image: Any) -> Image.Image:
    """An RGB ``PIL.Image`` of ``image``: :func:`mech.prepare.images.read_image` (a PIL image in any mode,
    a path, encoded bytes, or a numpy array / torch tensor; transparency onto white, EXIF orientation
    applied, 16-bit scaled to 8-bit).

    Raises:
        InputError: as :func:`~mech.prepare.images.read_image` (missing or unreadable file, decompression
            bomb, wrong shape or dtype, values outside the range of the dtype).
    """
    return read_image(image)


def _per_sample(images: Any, batch: int) -> list[list[Image.Image]]:
    if images is None:
        return [[] for _ in range(batch)]
    if not isinstance(images, (list, tuple)):
        images = [images]
    if batch == 1 and len(images) > 1 and not any(isinstance(x, (list, tuple)) for x in images):
        raise InputError(
            f"{len(images)} images for 1 prompt: pass one entry per prompt, e.g. [[img1, img2]] for "
            f"one prompt with {len(images)} images, or {len(images)} prompts for one image each."
        )
    if len(images) != batch:
        raise InputError(
            f"{len(images)} image entries for {batch} prompts; pass one entry (an image, a list of "
            "images, or None) per prompt."
        )
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
    m: Any,
    images: Any,
    prompts: str | Sequence[str],
    *,
    chat_template: bool = True,
    padding_side: str | None = None,
    image_position: str | Sequence[str] = "before",
) -> Inputs:
    """Apply the processor's chat template and processor to images and prompts.

    Args:
        m: the loaded model.
        images: per prompt an image, a list of images, or None; an image is anything
            :func:`mech.prepare.images.read_image` reads (a ``PIL.Image`` in any mode, a path, bytes, a
            numpy array or torch tensor). One entry per prompt: one prompt with two images is
            ``[[img1, img2]]``; a bare list of several images for one prompt is refused.
        prompts: one prompt or a list (the batch).
        chat_template: wrap each prompt as a user turn with one image entry per image and add the
            generation prompt. With False the prompt is used as written and must already hold one
            image placeholder per image.
        padding_side: ``"left"``/``"right"``; default: the family table's.
        image_position: ``"before"`` (the image entries, then the text) or ``"after"`` (the text, then
            the images: MMMU-Pro's official user turn) in the chat-template user turn; one value, or
            one per prompt. The family's template renders the turn (LLaVA-1.5's puts images first
            whatever the order); the k-th image always fills the k-th placeholder.

    Returns:
        :class:`Inputs` with ``input_ids [batch, pos]``, ``attention_mask``, the family's extra
        inputs, and ``.groups`` (text found by matching the prompts).

    Raises:
        ProcessorError: ``m`` has no processor.
        InputError: image entries differ from the prompts or the placeholders, unreadable image, empty
            batch, a row longer than the model's maximum positions (:func:`mech.prepare.fit.check_length`).

    Warns:
        FitWarning: most of the prompts' text tokens are the tokenizer's unknown token
            (:func:`mech.prepare.fit.check_vocabulary`).
        ConfigError: ``padding_side`` other than ``"left"``/``"right"``; ``image_position`` other than
            ``"before"``/``"after"`` (or not one per prompt).
    """
    proc = m.processor
    if proc is None:
        raise ProcessorError(
            "this model was loaded without a processor, so raw images and prompts cannot be "
            "prepared. Load with mech.load((model, processor)) or a directory holding the "
            "processor files, or pass already-tokenized inputs to the instruments."
        )
    if padding_side not in (None, "left", "right"):
        raise ConfigError(
            f"padding_side={padding_side!r}; allowed: 'left', 'right' (or None for the family's)."
        )
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InputError("no prompts given; pass at least one prompt.")
    per = _per_sample(images, len(prompts))
    positions = [image_position] * len(prompts) if isinstance(image_position, str) else list(image_position)
    if len(positions) != len(prompts) or any(p not in ("before", "after") for p in positions):
        raise ConfigError(
            f"image_position={image_position!r}; pass 'before' or 'after', or one of them per prompt."
        )
    token = _placeholder(proc)
    texts, segments, spans = [], [], []
    for prompt, imgs, position in zip(prompts, per, positions):
        inline = token is not None and token in prompt
        segments.append([s for s in (prompt.split(token) if inline else [prompt]) if s.strip()])
        if chat_template and not inline:
            if getattr(proc, "chat_template", None) is None:
                raise ProcessorError(
                    "the processor has no chat template; pass chat_template=False with the "
                    f"image placeholder {token!r} written in each prompt."
                )
            content = [{"type": "image"} for _ in imgs]
            content = (
                [{"type": "text", "text": prompt}] + content
                if position == "after"
                else content + [{"type": "text", "text": prompt}]
            )
            text, span = render_user_turn(proc, content, prompt)  # span: the prompt's characters in text
        else:
            text, span = prompt, inline_spans(prompt, token if inline else None)
        found = text.count(token) if token else 0
        if token and found != len(imgs):
            raise InputError(
                f"{len(imgs)} image(s) but {found} image placeholder(s) {token!r} in the prompt "
                f"{prompt[:60]!r}; give one image per placeholder."
            )
        texts.append(text)
        spans.append(span)
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
        with recording(tok) as calls:  # the strings the processor's tokenizer reads (groups by offsets)
            out = proc(**kwargs)
    except ValueError as exc:
        refused = [(i, r) for i, r in ((i, image_refusal(proc, imgs)) for i, imgs in enumerate(per)) if r]
        if refused:  # the real cause: an image outside the processor's limits, not the placeholders
            i, reason = refused[0]
            raise InputError(
                f"prompt {i} of this batch: {reason}. Pass an image within the processor's limits (or "
                "leave the row out; mech's commands skip such rows with this reason)."
            ) from exc
        raise InputError(
            f"the processor rejected the inputs: {exc}. Check that every image has a placeholder."
        ) from exc
    finally:
        if tok is not None and old_side is not None:
            tok.padding_side = old_side
    out.pop(
        "labels", None
    )  # PaliGemma's processor adds training labels; model(**inputs) would compute a loss
    data = complete_inputs(m, out)
    check_length(m, data, prompts)
    check_vocabulary(tok, [seg for row in segments for seg in row])
    groups = compute_groups(
        m.arch,
        data["input_ids"],
        data.get("attention_mask"),
        tok,
        segments,
        rendered=rendered_rows(tok, texts, spans, calls),
    )
    return Inputs(data, groups=groups, prompts=segments)


def complete_inputs(m: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` as a new dict, with the inputs the family needs that a caller may have left out
    (``derived_inputs``) added; ``inputs`` itself is not changed.

    ``"modality_codes"`` rebuilds ``mm_token_type_ids`` (0 text, 1 image, 2 video, 3 audio) from
    ``input_ids`` ``[batch, pos]`` exactly as transformers' processors do, so M-RoPE positions stay the
    model's own; ``"image_is_one"`` rebuilds Gemma3's ``token_type_ids`` (1 at image tokens).
    """
    out = dict(inputs)
    ids = out["input_ids"]
    for key, scheme in m.arch.table.derived_inputs.items():
        if key in out:
            continue
        types = torch.zeros_like(ids)
        for name, tok in m.arch.modality_ids.items():
            if scheme == "modality_codes" or name == "image":
                types[ids == tok] = MM_TYPE[name] if scheme == "modality_codes" else 1
        out[key] = types
    return out


def _ready(m: Any, inputs: Mapping[str, Any], device: torch.device | None) -> bool:
    """True when ``inputs`` is an :class:`Inputs` that :func:`as_inputs` would return unchanged."""
    if not isinstance(inputs, Inputs) or inputs.groups is None:
        return False
    if any(k not in inputs for k in m.arch.table.derived_inputs):
        return False
    on = {v.device for v in inputs.values() if isinstance(v, torch.Tensor)} | {inputs.groups.labels.device}
    return device is None or on == {device}


def as_inputs(m: Any, inputs: Mapping[str, Any]) -> Inputs:
    """Accept ``prepare`` outputs or raw processor outputs (``model(**inputs)`` style).

    Args:
        inputs: a mapping with ``input_ids`` ``[batch, pos]`` (an :class:`Inputs`, a processor's
            ``BatchFeature`` or a plain dict).

    Returns:
        An :class:`Inputs` on the model's device with derived inputs added and ``.groups`` set
        (computed from the token ids when the caller's inputs carry none); ``prompts``, ``condition``
        and ``ids`` are kept from an :class:`Inputs` (None for a processor's output). An :class:`Inputs` that
        needs none of this is returned as it is (it is immutable, so sharing it is safe).

    Raises:
        InputError: no ``input_ids``, or ``input_ids`` not ``[batch, pos]``.
    """
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise InputError(
            "inputs must be a mapping with 'input_ids' (what model(**inputs) takes); "
            "use m.prepare(images, prompts) to make one."
        )
    device = m.device
    if _ready(m, inputs, device):
        return inputs
    fields = {k: getattr(inputs, k, None) for k in RECORD_FIELDS}
    data = complete_inputs(m, inputs)
    if data["input_ids"].dim() != 2:
        raise InputError(f"input_ids must be [batch, pos]; got shape {tuple(data['input_ids'].shape)}.")
    if device is not None:
        data = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
    groups = fields["groups"]
    if groups is None:
        tok = getattr(m.processor, "tokenizer", None) if m.processor is not None else None
        groups = compute_groups(m.arch, data["input_ids"], data.get("attention_mask"), tok, fields["prompts"])
    fields["groups"] = groups.to(data["input_ids"].device)
    return Inputs(data, **fields)
