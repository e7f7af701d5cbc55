"""Data specs: ``organism:shapes`` | ``mmmu-pro:<dir>`` | ``jsonl:<file>``.

Every loader returns a :class:`Dataset`: a list of plain sample dicts with at least ``id``,
``question``, ``images`` (list of PIL images, possibly empty), ``options`` (list of str, possibly
empty) and ``answer`` (option letter or answer text), and the list of skipped rows with reasons
(nothing is dropped silently).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mech.errors import SpecError

SCHEMES = ("organism", "mmmu-pro", "jsonl")


@dataclass
class Dataset:
    """Samples of one data spec, plus every row that was skipped and why."""

    name: str
    samples: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]

    def __iter__(self):
        return iter(self.samples)


def _organism(name: str, n: int | None, seed: int) -> Dataset:
    from mech.organisms import shapes

    if name != "shapes":
        raise SpecError(f"unknown organism data set {name!r}; the organisms' data set is 'organism:shapes'.")
    samples = shapes.generate(n or 1000, split="test", seed=seed)
    for s in samples:
        s["images"] = [] if s["image"] is None else [s["image"]]
    return Dataset("organism:shapes", samples)


def load_data(spec: str, n: int | None = None, seed: int = 0) -> Dataset:
    """Resolve a data spec into a :class:`Dataset` of at most ``n`` samples.

    Raises:
        SpecError: unknown scheme (the message lists the valid ones) or missing path.
    """
    scheme, _, rest = spec.partition(":")
    if scheme not in SCHEMES or not rest:
        raise SpecError(f"data spec {spec!r} not understood; use one of organism:shapes, mmmu-pro:<dir>, "
                        "jsonl:<file>.")
    if scheme == "organism":
        return _organism(rest, n, seed)
    raise SpecError(f"the {scheme!r} loader is not available in this version; use organism:shapes.")
