"""``mech attention``: attention mass per layer, head and token group.

The command's registration: its settings class and ``INSTRUMENT``. The run layer discovers it
(:func:`mech.runs.instruments.discover`); this module is loaded without its package's ``__init__`` (which
imports torch), so it imports only light modules. The job, which does the work, is
:mod:`mech.measure.attention.job`. ``mech.runs.settings.AttentionSettings`` and
``mech.runs.AttentionSettings`` name the same class.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from mech.runs.instruments import Instrument
from mech.runs.settings import Query, ShardedSettings, option_help

__all__ = ["INSTRUMENT", "AttentionSettings"]


@dataclass(frozen=True)
class AttentionSettings(ShardedSettings):
    """``mech attention``: attention mass to image / text / template / bos tokens per layer and head."""

    n: int = field(default=200, metadata=option_help("number of samples"))
    query: Query = field(
        default="last", metadata=option_help("the query positions whose attention is recorded")
    )

    command: typing.ClassVar[str] = "attention"


#: the command's registration: ``mech report`` runs it as step 2
INSTRUMENT = Instrument(
    AttentionSettings, "mech.measure.attention.job:AttentionJob", in_report=True, order=20
)
