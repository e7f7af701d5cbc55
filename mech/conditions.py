"""Input conditions of the paper's case study (Zheng et al. 2025, arXiv:2505.18657, §4) and the
feature-level corruptions of causal tracing (Meng et al. 2022), as composable transforms.

Input conditions (:data:`INPUT_CONDITIONS`) rewrite a *sample* (a plain dict of
:mod:`mech.prepare.data`) and keep its ``id``, so that predictions line up across conditions:

==============  ===============================================================================
``complete``    nothing changes
``white_image`` every image replaced by an all-255 RGB image of the same size ("Text w/ white")
``black_image`` all-0 image of the same size
``noise_image`` Gaussian noise image of the same size: N(128, 64²) per channel, clipped to
                [0, 255], seeded by ``(seed, sample id, image index)`` so it does not depend on
                batching
``no_image``    images removed (the sequence gets shorter)
``image_only``  the question text replaced by :data:`BASIC_PROMPT` ("Image w/ B-P"); options,
                when the data set has them, stay in the prompt so an option letter can be given
==============  ===============================================================================

Feature conditions (:data:`FEATURE_CONDITIONS`: ``visual_noise``, ``visual_mean``) leave the
sample as it is; the change happens in the forward pass, under :func:`feature_condition`
(:mod:`mech.feature_conditions`, re-exported here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mech import words as W
from mech.errors import ConfigError, InputError
from mech.feature_conditions import (
    VISUAL_GROUPS,
    check_condition,
    corrupt_features,
    decoder_input_embeds,
    donor_rows_ok,
    feature_condition,
    injects_visual,
    require_input_only_visual,
    resample_features,
)
from mech.models.load import takes_model

# the feature conditions (mech.feature_conditions) are re-exported: this was their home before
__all__ = [
    "BASIC_PROMPT",
    "CONDITIONS",
    "FEATURE_CONDITIONS",
    "INPUT_CONDITIONS",
    "NEEDS_IMAGE",
    "NOISE_MEAN",
    "NOISE_STD",
    "PAPER_NAMES",
    "SAME_LENGTH",
    "VISUAL_GROUPS",
    "apply_condition",
    "check_condition",
    "condition_inputs",
    "corrupt_features",
    "decoder_input_embeds",
    "default_prompt",
    "donor_rows_ok",
    "feature_condition",
    "injects_visual",
    "noise_image",
    "require_input_only_visual",
    "resample_features",
    "resolve_condition",
]

CONDITIONS = W.names(W.CONDITIONS)  # names and meanings: mech.words
INPUT_CONDITIONS, FEATURE_CONDITIONS = W.INPUT_CONDITIONS, W.FEATURE_CONDITIONS
#: conditions whose token sequence has exactly the complete input's length (patchable position by position)
SAME_LENGTH = ("complete", "white_image", "black_image", "noise_image", "visual_noise", "visual_mean")
#: conditions that need at least one image in the sample
NEEDS_IMAGE = ("white_image", "black_image", "noise_image", "image_only", "visual_noise", "visual_mean")
BASIC_PROMPT = "Based on the provided images, please answer the question."
#: human-readable names used in the paper's tables
PAPER_NAMES = {
    "complete": "Complete",
    "white_image": "Text w/ white",
    "black_image": "Text w/ black",
    "noise_image": "Text w/ noise",
    "no_image": "Text only (no image)",
    "image_only": "Image w/ B-P",
    "visual_noise": "Visual-feature noise",
    "visual_mean": "Visual-feature mean",
}
NOISE_MEAN, NOISE_STD = 128.0, 64.0


def _seed_for(seed: int, sample_id: Any, index: int) -> int:
    digest = hashlib.sha256(f"{seed}|{sample_id}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A ``size`` = (width, height) RGB image of N(128, 64²) pixels, clipped, from ``seed``."""
    w, h = size
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(NOISE_MEAN, NOISE_STD, (h, w, 3)), 0, 255).round().astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _replace(image: Any, condition: str, seed: int) -> Image.Image:
    from mech.prepare.inputs import load_image

    size = load_image(image).size
    if condition == "white_image":
        return Image.new("RGB", size, (255, 255, 255))
    if condition == "black_image":
        return Image.new("RGB", size, (0, 0, 0))
    return noise_image(size, seed)


def apply_condition(sample: dict, condition: str, *, seed: int = 0) -> dict:
    """The sample under ``condition``: a new dict with the same ``id``.

    ``images`` (list of PIL images) is replaced by same-size white/black/noise images, emptied
    (``no_image``), or kept (``image_only``, where ``question`` becomes :data:`BASIC_PROMPT`).
    Feature conditions return an unchanged copy. The copy gets ``condition`` set; other keys
    (``options``, ``answer``, ...) are shared with the input, not copied.

    Raises:
        ConfigError: unknown condition (the message lists :data:`CONDITIONS`).
        InputError: a condition of :data:`NEEDS_IMAGE` on a sample without images.
    """
    check_condition(condition)
    images = list(sample.get("images") or [])
    if condition in NEEDS_IMAGE and not images:
        raise InputError(
            f"sample {sample.get('id')!r} has no image, so condition {condition!r} is undefined; "
            f"drop the sample or use one of: complete, no_image."
        )
    out = dict(sample)
    out["condition"] = condition
    if condition in ("white_image", "black_image", "noise_image"):
        out["images"] = [
            _replace(im, condition, _seed_for(seed, sample.get("id"), i)) for i, im in enumerate(images)
        ]
    elif condition == "no_image":
        out["images"] = []
        if "image" in out:
            out["image"] = None
    elif condition == "image_only":
        out["question"] = BASIC_PROMPT
    else:
        out["images"] = images
    return out


def default_prompt(sample: dict) -> str:
    """The prompt text of ``sample`` as its data set formats it (:func:`mech.prepare.data.format_prompt`)."""
    from mech.prepare.data import format_prompt

    return format_prompt(sample)


@takes_model
def condition_inputs(
    m: Any,
    samples: Sequence[dict],
    condition: str,
    *,
    seed: int = 0,
    prompt: Callable[[dict], str] | None = None,
    padding_side: str | None = None,
):
    """``m.prepare`` of ``samples`` under ``condition`` (rows in the order of ``samples``).

    Args:
        m: a :class:`~mech.models.MechModel`.
        samples: sample dicts from :func:`mech.prepare.data.load_data`.
        condition: one of :data:`CONDITIONS`. For feature conditions these are the complete
            inputs; wrap the forward in :func:`feature_condition`.
        seed: seeds the noise images.
        prompt: ``sample -> prompt text`` applied to the *transformed* sample; default: the data
            set's own formatting (:func:`mech.prepare.data.format_prompt`: the bare question for
            ``organism:shapes``, question + lettered options + the Direct instruction for MMMU-Pro).
        padding_side: passed to ``prepare`` (generation needs ``"left"``).

    Returns:
        a frozen :class:`~mech.prepare.inputs.Inputs` ``[batch, pos]`` with ``.groups``,
        ``.condition`` (= ``condition``) and ``.ids`` (the sample ids, in row order); both survive
        ``m.inputs(...)``, and instruments with a ``condition=`` argument read it from there
        (:func:`resolve_condition`).

    Raises:
        ConfigError, InputError: as :func:`apply_condition` and ``m.prepare``.
    """
    if not samples:
        raise InputError("no samples given; pass at least one sample.")
    fmt = prompt or default_prompt
    transformed = [apply_condition(s, condition, seed=seed) for s in samples]
    inputs = m.prepare(
        [t["images"] for t in transformed],
        [fmt(t) for t in transformed],
        padding_side=padding_side,
        image_position=[t.get("image_position", "before") for t in transformed],
    )
    return inputs.replace(condition=condition, ids=[s.get("id") for s in samples])


def resolve_condition(inputs: Any, condition: str | None, *, default: str | None = None) -> str | None:
    """The condition a run of ``inputs`` is under: the explicit ``condition``, else the inputs' own
    ``inputs.condition`` (set by :func:`condition_inputs`), else ``default``.

    Inputs made under ``"complete"`` may be run under a feature condition (``visual_noise``,
    ``visual_mean``): those leave the tokens as they are and change the forward pass.

    Raises:
        ConfigError: an unknown condition (given, or the inputs' own), or an explicit ``condition``
            that contradicts the inputs' own (e.g. ``condition="no_image"`` for inputs made under
            ``"white_image"``).
    """
    own = getattr(inputs, "condition", None)
    if own is not None:
        check_condition(own)
    if condition is None:
        return own if own is not None else default
    check_condition(condition)
    if own is not None and own != condition and not (own == "complete" and condition in FEATURE_CONDITIONS):
        raise ConfigError(
            f"condition={condition!r} contradicts the inputs, which were made under {own!r} "
            f"(condition_inputs(..., {own!r})); drop condition= (it is read from the inputs) or "
            f"make the inputs with condition_inputs(m, samples, {condition!r})"
        )
    return condition
