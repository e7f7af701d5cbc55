"""Turning images and prompts (or raw processor outputs) into model inputs with token groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from PIL import Image

from mech.errors import ConfigError, FrozenError, InputError, ProcessorError
from mech.prepare.fit import FitWarning, check_data_fit, check_length, check_vocabulary, image_refusal, max_positions  # noqa: F401
from mech.prepare.groups import TokenGroups, compute_groups
from mech.prepare.images import read_image
from mech.prepare.spans import inline_spans, recording, render_user_turn, rendered_rows

# ``MechModel`` (mech.models.load) in the annotations below: a name only, never imported here, so
# that load -> inputs stays the one direction between the two modules
MM_TYPE = {"image": 1, "video": 2, "audio": 3}  # transformers' mm_token_type_ids codes


_RECORD = ("groups", "prompts", "condition", "ids")


def _frozen(what: str) -> FrozenError:
    return FrozenError(f"Inputs are frozen: cannot {what}. Build a changed copy with inputs.replace(...) "
                       "(e.g. inputs.replace(pixel_values=new, condition='white_image')) or inputs.to(device).")


def _device_of(args: tuple, kwargs: dict) -> torch.device | None:
    """The device among ``Tensor.to``-style arguments (BatchFeature.to's rule), or None."""
    for a in (*args, kwargs.get("device")):
        if isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool)):
            return torch.device(a)
    return None


def _rebuild(data: dict, fields: dict) -> Inputs:
    return Inputs(data, **fields)


class Inputs(Mapping):
    """Frozen record of one batch: what ``model(**inputs)`` takes, plus what mech knows about its rows.

    A read-only mapping ``str -> tensor`` (``inputs["input_ids"]`` ``[batch, pos]``,
    ``attention_mask`` ``[batch, pos]``, the family's pixel/grid inputs), so ``model(**inputs)``,
    ``dict(inputs)`` and ``inputs.items()`` work unchanged. Attributes (not keys):

    * ``groups``: :class:`~mech.prepare.groups.TokenGroups` ``[batch, pos]`` (None until :func:`as_inputs`);
    * ``prompts``: per row, the user's prompt segments (tuple of tuples of str), or None;
    * ``condition``: the input condition the rows were made under (:data:`mech.conditions.CONDITIONS`;
      set by :func:`mech.conditions.condition_inputs`), or None when unknown;
    * ``ids``: the sample ids in row order (tuple, one per row), or None.

    Every one of them survives :func:`as_inputs` (``m.inputs(...)``). Nothing can be changed in place:
    assigning or deleting an item or attribute raises :class:`~mech.errors.FrozenError`; :meth:`replace`
    and :meth:`to` return changed copies (tensors are shared, not copied).

    Raises (on construction):
        InputError: a non-string key, or ``ids`` whose length is not the batch size.
        ConfigError: ``condition`` not a string (its name is checked where it is used:
            :func:`mech.conditions.resolve_condition`).
    """

    __slots__ = ("_data", "groups", "prompts", "condition", "ids")

    def __init__(self, data: Mapping[str, Any] = (), *, groups: TokenGroups | None = None,
                 prompts: Sequence[Sequence[str] | str] | None = None, condition: str | None = None,
                 ids: Sequence[Any] | None = None) -> None:
        data = dict(data)
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise InputError(f"input names must be strings (model(**inputs)); got {bad[:3]}")
        if condition is not None and not isinstance(condition, str):
            raise ConfigError(f"condition must be a condition name (mech.conditions.CONDITIONS) or None; "
                              f"got {type(condition).__name__}")
        if prompts is not None:
            prompts = tuple(p if isinstance(p, str) else tuple(p) for p in prompts)
        if ids is not None:
            ids = tuple(ids)
            ii = data.get("input_ids")
            if isinstance(ii, torch.Tensor) and ii.dim() == 2 and len(ids) != ii.shape[0]:
                raise InputError(f"{len(ids)} sample ids for a batch of {ii.shape[0]} rows; pass one id per row.")
        for name, value in (("_data", MappingProxyType(data)), ("groups", groups), ("prompts", prompts),
                            ("condition", condition), ("ids", ids)):
            object.__setattr__(self, name, value)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setitem__(self, key: str, value: Any) -> None:
        raise _frozen(f"set inputs[{key!r}]")

    def __delitem__(self, key: str) -> None:
        raise _frozen(f"delete inputs[{key!r}]")

    def __setattr__(self, name: str, value: Any) -> None:
        raise _frozen(f"set inputs.{name}")

    def __delattr__(self, name: str) -> None:
        raise _frozen(f"delete inputs.{name}")

    def __reduce__(self):
        return _rebuild, (dict(self._data), self.fields())

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                           for k, v in self._data.items())
        return f"Inputs({{{shapes}}}, condition={self.condition!r}, ids={self.ids!r})"

    def fields(self) -> dict[str, Any]:
        """The record's attributes: ``{"groups", "prompts", "condition", "ids"}``."""
        return {k: getattr(self, k) for k in _RECORD}

    def replace(self, **changes: Any) -> Inputs:
        """A copy with ``changes`` applied; ``self`` is unchanged.

        A change named ``groups``, ``prompts``, ``condition`` or ``ids`` sets that attribute; any other
        name sets that model input (a tensor; ``None`` removes it). Changing ``input_ids`` without
        ``groups`` drops the groups (:func:`as_inputs` recomputes them from the new ids).

        Raises:
            InputError, ConfigError: as the constructor.
        """
        fields, data = self.fields(), dict(self._data)
        for k, v in changes.items():
            if k in _RECORD:
                fields[k] = v
            elif v is None:
                data.pop(k, None)
            else:
                data[k] = v
        if "input_ids" in changes and "groups" not in changes:
            fields["groups"] = None
        return Inputs(data, **fields)

    def to(self, *args: Any, **kwargs: Any) -> Inputs:
        """A copy with ``Tensor.to(*args, **kwargs)`` applied as ``BatchFeature.to`` does: floating-point
        tensors get every argument (device and dtype); other tensors (token ids, masks) and the groups
        only move to the device, if one is given."""
        device = _device_of(args, kwargs)

        def move(v: Any) -> Any:
            if not isinstance(v, torch.Tensor):
                return v
            if v.is_floating_point():
                return v.to(*args, **kwargs)
            return v.to(device=device) if device is not None else v

        fields = self.fields()
        if device is not None and fields["groups"] is not None:
            fields["groups"] = fields["groups"].to(device)
        return Inputs({k: move(v) for k, v in self._data.items()}, **fields)


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
        raise InputError(f"{len(images)} images for 1 prompt: pass one entry per prompt, e.g. [[img1, img2]] for "
                         f"one prompt with {len(images)} images, or {len(images)} prompts for one image each.")
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
        raise ProcessorError("this model was loaded without a processor, so raw images and prompts cannot be "
                             "prepared. Load with mech.load((model, processor)) or a directory holding the "
                             "processor files, or pass already-tokenized inputs to the instruments.")
    if padding_side not in (None, "left", "right"):
        raise ConfigError(f"padding_side={padding_side!r}; allowed: 'left', 'right' (or None for the family's).")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InputError("no prompts given; pass at least one prompt.")
    per = _per_sample(images, len(prompts))
    positions = [image_position] * len(prompts) if isinstance(image_position, str) else list(image_position)
    if len(positions) != len(prompts) or any(p not in ("before", "after") for p in positions):
        raise ConfigError(f"image_position={image_position!r}; pass 'before' or 'after', or one of them per prompt.")
    token = _placeholder(proc)
    texts, segments, spans = [], [], []
    for prompt, imgs, position in zip(prompts, per, positions):
        inline = token is not None and token in prompt
        segments.append([s for s in (prompt.split(token) if inline else [prompt]) if s.strip()])
        if chat_template and not inline:
            if getattr(proc, "chat_template", None) is None:
                raise ProcessorError("the processor has no chat template; pass chat_template=False with the "
                                     f"image placeholder {token!r} written in each prompt.")
            content = [{"type": "image"} for _ in imgs]
            content = [{"type": "text", "text": prompt}] + content if position == "after" else content + [
                {"type": "text", "text": prompt}]
            text, span = render_user_turn(proc, content, prompt)  # span: the prompt's characters in text
        else:
            text, span = prompt, inline_spans(prompt, token if inline else None)
        found = text.count(token) if token else 0
        if token and found != len(imgs):
            raise InputError(f"{len(imgs)} image(s) but {found} image placeholder(s) {token!r} in the prompt "
                             f"{prompt[:60]!r}; give one image per placeholder.")
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
            raise InputError(f"prompt {i} of this batch: {reason}. Pass an image within the processor's limits (or "
                             "leave the row out; mech's commands skip such rows with this reason).") from exc
        raise InputError(f"the processor rejected the inputs: {exc}. Check that every image has a placeholder.") from exc
    finally:
        if tok is not None and old_side is not None:
            tok.padding_side = old_side
    out.pop("labels", None)  # PaliGemma's processor adds training labels; model(**inputs) would compute a loss
    data = complete_inputs(m, out)
    check_length(m, data, prompts)
    check_vocabulary(tok, [seg for row in segments for seg in row])
    groups = compute_groups(m.arch, data["input_ids"], data.get("attention_mask"), tok, segments,
                            rendered=rendered_rows(tok, texts, spans, calls))
    return Inputs(data, groups=groups, prompts=segments)


def complete_inputs(m: MechModel, inputs: Mapping[str, Any]) -> dict[str, Any]:
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


def _ready(m: MechModel, inputs: Mapping[str, Any], device: torch.device | None) -> bool:
    """True when ``inputs`` is an :class:`Inputs` that :func:`as_inputs` would return unchanged."""
    if not isinstance(inputs, Inputs) or inputs.groups is None:
        return False
    if any(k not in inputs for k in m.arch.table.derived_inputs):
        return False
    on = {v.device for v in inputs.values() if isinstance(v, torch.Tensor)} | {inputs.groups.labels.device}
    return device is None or on == {device}


def as_inputs(m: MechModel, inputs: Mapping[str, Any]) -> Inputs:
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
        raise InputError("inputs must be a mapping with 'input_ids' (what model(**inputs) takes); "
                         "use m.prepare(images, prompts) to make one.")
    device = m.device
    if _ready(m, inputs, device):
        return inputs
    fields = {k: getattr(inputs, k, None) for k in _RECORD}
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
