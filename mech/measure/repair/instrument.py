"""``mech repair``: edit the units an explanation names, against random edits.

The command's registration: its settings class and ``INSTRUMENT``. The run layer discovers it
(:func:`mech.runs.instruments.discover`); this module is loaded without its package's ``__init__`` (which
imports torch), so it imports only light modules. The job, which does the work, is
:mod:`mech.measure.repair.job`. ``mech.runs.settings.RepairSettings`` and ``mech.runs.RepairSettings``
name the same class.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from mech.runs.instruments import Instrument
from mech.runs.settings import (
    Granularity,
    Prior,
    RepairEdit,
    RepairPositions,
    RepairSource,
    Settings,
    option_help,
)

__all__ = ["INSTRUMENT", "RepairSettings"]


@dataclass(frozen=True)
class RepairSettings(Settings):
    """``mech repair``: edit the units an explanation names (fit split), evaluated on held-out samples
    against same-size random edits (docs/repair.md)."""

    n: int = field(default=1000, metadata=option_help("held-out samples"))
    batch_size: int = field(default=64, metadata=option_help("samples per forward"))
    fit_data: str | None = field(
        default=None,
        metadata=option_help(
            "data spec of the fit split (default: --data; organism:shapes then draws it with --fit-seed)"
        ),
    )
    fit_n: int = field(default=1000, metadata=option_help("fit samples (ranking and fit statistics)"))
    fit_seed: int = field(
        default=1,
        metadata=option_help("organism:shapes seed of the fit split (held-out uses --seed; ids must differ)"),
    )
    edit: RepairEdit = field(
        default="zero", metadata=option_help("zero / mean ablation, steer, or attention reweight")
    )
    granularity: Granularity = field(
        default="neurons", metadata=option_help("MLP neurons, attention heads, or layers")
    )
    source: RepairSource = field(
        default="attribution",
        metadata=option_help(
            "the explanation that ranks units: attribution patching at the answer position, "
            "the decomposition "
            "(layers), or --units"
        ),
    )
    k: int | None = field(
        default=None,
        metadata=option_help(
            "units edited (default: a quarter of the neurons, a tenth of the heads, two layer components)"
        ),
    )
    ks: tuple[int, ...] | None = field(
        default=None, metadata=option_help("sizes of the effect-vs-k curve (default k/8 .. 2k)")
    )
    units: tuple[str, ...] | None = field(
        default=None, metadata=option_help("units for --source list, as LAYER:INDEX")
    )
    selection_from: str | None = field(
        default=None,
        metadata=option_help(
            "a repair.json whose ranking to apply (another model's: the result is labelled transferred)"
        ),
    )
    positions: RepairPositions = field(
        default="answer", metadata=option_help("edit the answer position or all positions")
    )
    alpha: float | None = field(
        default=None, metadata=option_help("steering scale / attention factor (default 4 / 2)")
    )
    n_random: int = field(default=5, metadata=option_help("same-size random edits (at least 5)"))
    max_fit_drop: float | None = field(
        default=None,
        metadata=option_help(
            "choose k on the fit split: the largest of --ks whose edit lowers the fit accuracy "
            "by at most this much"
        ),
    )
    prior: Prior = field(
        default="auto",
        metadata=option_help(
            "the prior answer: planted (organism data), white_image (the model's text-only answer), auto"
        ),
    )
    progress: bool = field(default=True, metadata=option_help("show a progress bar"))

    command: typing.ClassVar[str] = "repair"


#: the command's registration: not a step of ``mech report`` (its section is written when its JSON is in
#: the report's folder)
INSTRUMENT = Instrument(RepairSettings, "mech.measure.repair.job:RepairJob", order=50)
