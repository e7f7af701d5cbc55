"""Model organisms: tiny multimodal models trained in the package with a planted modality bias.

Two architectures: LLaVA (CLIP tower, 16 image tokens; ``balanced``, ``text-biased``,
``image-biased``, data ``organism:shapes``) and Qwen2.5-VL (dynamic resolution, M-RoPE;
``qwen-balanced``, ``qwen-text-biased``, ``qwen-image-biased``, data ``organism:shapes-varied``).

``ORGANISMS`` names the shipped ones; ``organism_dir(name)`` is the folder that
``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained`` load offline.
Data: ``mech.organisms.shapes`` (``organism:shapes``). Training: ``python -m
mech.organisms.train NAME``. Cards: ``mech.organisms.card``.
"""

from __future__ import annotations

from pathlib import Path

from mech.errors import SpecError

__all__ = ["DATA", "ORGANISMS", "UNSHIPPED", "organism_dir", "organism_dir_default"]

ORGANISMS = (
    "balanced",
    "text-biased",
    "image-biased",
    "qwen-balanced",
    "qwen-text-biased",
    "qwen-image-biased",
)
#: the data set each organism is trained and measured on
DATA = {
    name: "organism:shapes-varied" if name.startswith("qwen-") else "organism:shapes" for name in ORGANISMS
}
#: recipes that ``python -m mech.organisms.train`` knows but that are not shipped (yet)
UNSHIPPED: tuple[str, ...] = ()
_HERE = Path(__file__).resolve().parent
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def organism_dir_default(name: str) -> Path:
    """Where organism ``name`` is shipped (``mech/organisms/<name>``), existing or not."""
    return _HERE / name


def organism_dir(name: str) -> Path:
    """The shipped folder of organism ``name``.

    Accepts ``"balanced"`` or ``"organism:balanced"``. Raises ``SpecError`` (listing the valid
    names) for an unknown name, or when the folder or one of its files is missing (the message
    says how to rebuild it).
    """
    name = name.removeprefix("organism:")
    if name not in ORGANISMS + UNSHIPPED:
        raise SpecError(
            f"unknown organism {name!r}; valid names: {', '.join(ORGANISMS)} "
            f"(data: organism:shapes, organism:shapes-varied)"
        )
    folder = organism_dir_default(name)
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if missing:
        raise SpecError(
            f"organism {name!r} is not built ({folder} lacks {', '.join(missing)}); "
            f"run python -m mech.organisms.train {name}"
        )
    return folder
