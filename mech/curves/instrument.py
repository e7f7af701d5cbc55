"""``mech contrib``: modality-contribution curves and the imbalance ratio Δ.

The command's registration: its settings class and ``INSTRUMENT``. The run layer discovers it
(:func:`mech.runs.instruments.discover`); this module is loaded without its package's ``__init__`` (which
imports torch), so it imports only light modules. The job, which does the work, is
:mod:`mech.curves.job`. ``mech.runs.settings.ContribSettings`` and ``mech.runs.ContribSettings`` name the
same class.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from mech.deprecation import renamed_fields
from mech.runs.instruments import Instrument
from mech.runs.settings import Estimator, Removal, ShardedSettings, option_help

__all__ = ["INSTRUMENT", "ContribSettings"]


@renamed_fields(ablation="removal")
@dataclass(frozen=True)
class ContribSettings(ShardedSettings):
    """``mech contrib``: layerwise modality-contribution curves and the imbalance ratio Δ."""

    n: int = field(default=256, metadata=option_help("number of samples"))
    estimators: tuple[Estimator, ...] = field(
        default=("attention", "patching", "dla", "decomposition"), metadata=option_help("estimators")
    )
    removal: Removal = field(
        default="resample",
        metadata=option_help(
            "how the patching and decomposition estimators remove a token group: resample (another sample's "
            "embeddings of the group) or noise (Gaussian)"
        ),
    )

    command: typing.ClassVar[str] = "contrib"


#: the command's registration: ``mech report`` runs it as step 4
INSTRUMENT = Instrument(ContribSettings, "mech.curves.job:ContribJob", in_report=True, order=40)
