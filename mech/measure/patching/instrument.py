"""``mech patch``: activation patching between complete and ablated inputs.

The command's registration: its settings class and ``INSTRUMENT``. The run layer discovers it
(:func:`mech.runs.instruments.discover`); this module is loaded without its package's ``__init__`` (which
imports torch), so it imports only light modules. The job, which does the work, is
:mod:`mech.measure.patching.job`. ``mech.runs.settings.PatchSettings`` and ``mech.runs.PatchSettings``
name the same class.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from mech.runs.instruments import Instrument
from mech.runs.settings import Condition, Direction, PatchMetric, Position, ShardedSettings, Site, option_help

__all__ = ["INSTRUMENT", "PatchSettings"]


@dataclass(frozen=True)
class PatchSettings(ShardedSettings):
    """``mech patch``: activation patching between complete and ablated inputs."""

    n: int = field(default=64, metadata=option_help("number of samples"))
    corruption: Condition = field(
        default="white_image", metadata=option_help("the corrupted input condition")
    )
    direction: Direction = field(default="denoising", metadata=option_help("denoising: clean into corrupted"))
    metric: PatchMetric = field(default="logit_diff", metadata=option_help("the patching metric"))
    sites: tuple[Site, ...] = field(
        default=("resid_post", "attn_out", "mlp_out"), metadata=option_help("patched sites")
    )
    positions: tuple[Position, ...] = field(
        default=("image", "text", "last"), metadata=option_help("position groups")
    )

    command: typing.ClassVar[str] = "patch"


#: the command's registration: ``mech report`` runs it as step 3
INSTRUMENT = Instrument(PatchSettings, "mech.measure.patching.job:PatchJob", in_report=True, order=30)
