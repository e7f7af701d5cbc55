"""``mech eval``: accuracy per input condition and prediction consistency.

The command's registration: its settings class and ``INSTRUMENT``. The run layer discovers it
(:func:`mech.runs.instruments.discover`); this module is loaded without its package's ``__init__`` (which
imports torch), so it imports only light modules. The job, which does the work, is
:mod:`mech.measure.evaluation.job`. ``mech.runs.settings.EvalSettings`` and ``mech.runs.EvalSettings``
name the same class.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from mech.errors import ConfigError
from mech.runs.instruments import Instrument
from mech.runs.settings import (
    DEFAULT_CONDITIONS,
    Condition,
    Method,
    Parser,
    Scoring,
    ShardedSettings,
    option_help,
)

__all__ = ["INSTRUMENT", "EvalSettings"]


@dataclass(frozen=True)
class EvalSettings(ShardedSettings):
    """``mech eval``: accuracy per input condition and prediction consistency (the paper's Tables 1-2)."""

    n: int = field(default=1000, metadata=option_help("number of samples"))
    conditions: tuple[Condition, ...] = field(
        default=DEFAULT_CONDITIONS, metadata=option_help("input conditions")
    )
    method: Method = field(
        default="score", metadata=option_help("score the options (one forward) or generate")
    )
    scoring: Scoring | None = field(
        default=None, metadata=option_help("option scoring (default: the data set's)")
    )
    max_new_tokens: int | None = field(
        default=None, metadata=option_help("generation budget (default 16 direct, 512 cot)")
    )
    parser: Parser = field(
        default="official",
        metadata=option_help(
            "how generated answers are read: MMMU-Pro's official parse_multi_choice_response "
            "(its random guess made "
            "deterministic) or mech's stricter one"
        ),
    )

    command: typing.ClassVar[str] = "eval"

    def __post_init__(self) -> None:
        conditions = self.conditions
        if isinstance(conditions, str) or any("," in c for c in conditions):  # "a,b" or ["a,b"]: a comma list
            parts = [conditions] if isinstance(conditions, str) else list(conditions)
            object.__setattr__(
                self, "conditions", tuple(c.strip() for p in parts for c in p.split(",") if c.strip())
            )
        super().__post_init__()
        if not self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise ConfigError(f"conditions {list(self.conditions)} must be a non-empty list without repeats.")


#: the command's registration: ``mech report`` runs it as step 1
INSTRUMENT = Instrument(EvalSettings, "mech.measure.evaluation.job:EvalJob", in_report=True, order=10)
