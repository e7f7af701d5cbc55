"""MMMU-Pro as its official code reads it: the prompt text, which images, in which order, and where.

Source: MMMU-Pro's inference code, https://github.com/MMMU-Benchmark/MMMU (commit bb0b95a9,
2025-05-19), ``mmmu-pro/infer/infer_transformers.py`` (the script for transformers models) and
``mmmu-pro/prompts.yaml``; Yue et al. 2024, *MMMU-Pro* (arXiv:2409.02813).

* **Prompt** (``construct_prompt``): ``f"{question}\\n{options}\\n{instruction}"`` with the question
  verbatim (not stripped), the options as ``"A. …"`` lines (each option formatted with
  ``f"{option}"``, so a nested list stays one option, its Python repr), and the instruction of
  ``prompts.yaml`` (:data:`PROMPTS`). Then ``replace_images_tokens``: every ``<image N>``
  (``<image\\s+N>``) in the whole prompt becomes the text ``[image]``. ``infer_gpt.py`` writes
  ``<image>`` instead; mech follows ``infer_transformers.py``, whose ``[image]`` is not an image
  placeholder of any processor (``<image>`` is LLaVA's and SmolVLM's).
* **Vision** setting: the prompt is the instruction alone (``prompts.yaml``'s ``vision`` entries;
  the direct one has two sentences) and the one ``image``.
* **Images** (``replace_images_tokens`` + ``origin_mmmu_doc_to_visual``): one image per ``<image N>``
  mention of the prompt, in order of mention, repeats included; an image column that no mention
  names is not given to the model (none at all when nothing is mentioned).
  ``images="lmms-eval"`` takes lmms-eval's convention instead (``mmmu_pro_doc_to_visual``: the
  mentioned columns once each, sorted by name).
* **Placement**: the user turn is the text first, then the images (``run_inference_on_dataset``:
  ``content = [text] + [image, …]``); the model's own chat template renders that turn
  (:func:`mech.prepare.inputs.prepare` with ``image_position="after"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mech.errors import SpecError

__all__ = [
    "COT",
    "COT_VISION",
    "DIRECT",
    "DIRECT_VISION",
    "IMAGE_ORDERS",
    "IMAGE_TEXT",
    "MMMU_CONFIGS",
    "PROMPTS",
    "choices_text",
    "config_files",
    "image_columns",
    "option_strings",
    "parse_fragment",
    "prompt",
    "raw_prompt",
    "standard_prompt",
]

#: ``mmmu-pro/prompts.yaml``, verbatim: mode -> setting -> instruction
PROMPTS = {
    "cot": {
        "vision": "Write out the multiple-choice question in the image and then solve it. The last line of your "
        "response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is "
        "one of options. Think step by step before answering.",
        "standard": "Answer the preceding multiple choice question. The last line of your response should be of the "
        "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step "
        "by step before answering.",
    },
    "direct": {
        "vision": "Answer with the option letter from the given choices directly. The last line of your response "
        "should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of "
        "options.",
        "standard": "Answer with the option letter from the given choices directly.",
    },
}
DIRECT = PROMPTS["direct"]["standard"]
COT = PROMPTS["cot"]["standard"]
DIRECT_VISION = PROMPTS["direct"]["vision"]
COT_VISION = PROMPTS["cot"]["vision"]
#: ``#config`` of a data spec -> the configuration folder of the MMMU-Pro root
MMMU_CONFIGS = {
    "standard-4": "standard (4 options)",
    "standard-10": "standard (10 options)",
    "vision": "vision",
}
#: which images a standard row gives, and in which order (see the module docstring)
IMAGE_ORDERS = ("official", "lmms-eval")
#: what ``<image N>`` becomes in the prompt text (infer_transformers.py's ``replace_images_tokens``)
IMAGE_TEXT = "[image]"
_MENTION = re.compile(r"<image\s+(\d+)>")
_LMMS_MENTION = re.compile(r"<image \d+>")


def option_strings(options: Sequence[Any]) -> list[str]:
    """Each option as the official prompt prints it: ``f"{option}"`` (a nested list: its repr)."""
    return [f"{o}" for o in options]


def choices_text(options: Sequence[str]) -> str:
    """``parse_options``: ``"A. first\\nB. second…"``."""
    return "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def raw_prompt(question: str, options: Sequence[str], instruction: str) -> str:
    """``construct_prompt``: the prompt before ``<image N>`` is replaced (question verbatim)."""
    return f"{question}\n{choices_text(options)}\n{instruction}"


def standard_prompt(question: str, options: Sequence[str], instruction: str) -> str:
    """The standard setting's prompt text: :func:`raw_prompt` with every ``<image N>`` as ``[image]``."""
    return _MENTION.sub(IMAGE_TEXT, raw_prompt(question, options, instruction))


def image_columns(question: str, options: Sequence[str], order: str = "official") -> list[str]:
    """The image columns a standard row gives the model, in order (``["image_2", "image_1", "image_2"]``).

    ``"official"``: every ``<image N>`` (``<image\\s+N>``) of the prompt in order of mention, repeats
    included (``replace_images_tokens`` + ``origin_mmmu_doc_to_visual``). ``"lmms-eval"``: the
    mentioned columns (``<image N>`` with one space) once each, sorted by name (``mmmu_pro_doc_to_visual``).

    Raises:
        ValueError: an unknown ``order`` (the message lists :data:`IMAGE_ORDERS`).
    """
    text = raw_prompt(question, options, "")
    if order == "official":
        return [f"image_{int(k)}" for k in _MENTION.findall(text)]
    if order == "lmms-eval":
        return sorted({t.strip("<>").replace(" ", "_") for t in _LMMS_MENTION.findall(text)})
    raise ValueError(f"image order {order!r}; allowed: {', '.join(IMAGE_ORDERS)}")


def prompt(sample: dict, style: str) -> str:
    """The prompt text of an MMMU-Pro ``sample`` in ``style`` (``"direct"`` or ``"cot"``).

    Standard rows: :func:`standard_prompt` with :data:`DIRECT` / :data:`COT`. Vision rows
    (``options_in_image``): the instruction alone (:data:`DIRECT_VISION` / :data:`COT_VISION`),
    after the question when a condition put one there (``image_only``'s basic prompt).
    """
    mode = "cot" if style == "cot" else "direct"
    question = sample.get("question") or ""
    if sample.get("options_in_image"):
        instruction = PROMPTS[mode]["vision"]
        return f"{question}\n{instruction}" if question else instruction
    return standard_prompt(question, list(sample.get("options") or []), PROMPTS[mode]["standard"])


def config_files(root: Path, config: str | None) -> tuple[list[Path], str]:
    """``(parquet files, folder)`` of ``root``: its own ``*.parquet`` (folder ``"auto"``) unless a
    configuration is named, else those of the configuration's folder (default ``standard-10``).

    Raises:
        SpecError: ``root`` missing, an unknown configuration, or no parquet file there.
    """
    if not root.is_dir():
        raise SpecError(
            f"MMMU-Pro directory {str(root)!r} does not exist; pass mmmu-pro:<dir> with the parquet "
            "files or the MMMU-Pro root holding 'standard (10 options)' etc."
        )
    direct = sorted(root.glob("*.parquet"))
    if direct and config is None:
        return direct, "auto"
    key = config or "standard-10"
    folder = MMMU_CONFIGS.get(key) or (key if key in MMMU_CONFIGS.values() else None)
    if folder is None:
        raise SpecError(
            f"MMMU-Pro configuration {key!r}; allowed: {', '.join(MMMU_CONFIGS)} "
            f"(e.g. mmmu-pro:{root}#vision)"
        )
    files = sorted((root / folder).glob("**/*.parquet"))
    if not files:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise SpecError(
            f"no parquet files in {str(root / folder)!r}; folders found: {found or 'none'}. Pass a "
            "directory holding *.parquet or the MMMU-Pro root with its configuration folders."
        )
    return files, folder


def parse_fragment(fragment: str) -> tuple[str | None, str]:
    """``"standard-10,images=lmms-eval"`` -> ``("standard-10", "lmms-eval")`` (config, image order)."""
    config, order = None, "official"
    for item in (x.strip() for x in fragment.split(",")) if fragment else ():
        key, eq, value = item.partition("=")
        if eq and key.strip() == "images":
            if value.strip() not in IMAGE_ORDERS:
                raise SpecError(
                    f"MMMU-Pro images={value.strip()!r}; allowed: {', '.join(IMAGE_ORDERS)} "
                    "(e.g. mmmu-pro:<dir>#standard-10,images=lmms-eval)"
                )
            order = value.strip()
        elif eq:
            raise SpecError(
                f"MMMU-Pro option {item!r} not understood; the only option is images="
                f"{'|'.join(IMAGE_ORDERS)} (e.g. mmmu-pro:<dir>#standard-10,images=lmms-eval)"
            )
        elif item:
            config = item
    return config, order
