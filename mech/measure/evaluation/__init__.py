"""Missing-modality evaluation: accuracy per input condition and prediction consistency, the
behavioural evidence of Zheng et al. 2025 (arXiv:2505.18657, §4, Tables 1-2), for any model
and data set.

``evaluate(m, data, conditions=..., method="score"|"direct"|"cot")`` answers every sample under
every condition (batched, in memory); ``consistency_table`` builds Table 2; ``to_frame`` makes its
answers a tidy frame (one row per sample × condition); ``EvalJob`` is ``mech eval`` on the run loop
(:mod:`mech.runs`: resumable, sharded); ``EvalRecord`` is ``eval.json`` as a typed, frozen record
(what ``eval.md``, the figure and the report read).
"""

from mech.measure.evaluation.answering import (
    METHODS,
    PARSERS,
    generate_batch,
    official_multi_choice,
    parse_multi_choice_response,
    parse_response,
    read_response,
    score_batch,
)
from mech.measure.evaluation.consistency import PAIRS, accuracy_table, consistency_table
from mech.measure.evaluation.job import EvalJob, write_outputs
from mech.measure.evaluation.record import EvalRecord
from mech.measure.evaluation.run import DEFAULT_CONDITIONS, evaluate, to_frame
from mech.measure.evaluation.tables import figure, markdown, table1, table2

__all__ = [
    "DEFAULT_CONDITIONS",
    "METHODS",
    "PAIRS",
    "PARSERS",
    "EvalJob",
    "EvalRecord",
    "accuracy_table",
    "consistency_table",
    "evaluate",
    "figure",
    "generate_batch",
    "markdown",
    "official_multi_choice",
    "parse_multi_choice_response",
    "parse_response",
    "read_response",
    "score_batch",
    "table1",
    "table2",
    "to_frame",
    "write_outputs",
]
