"""``mech knockout``: attention knockout over a data set, on the run loop (:mod:`mech.runs.loop`).

The command's whole registration lives here: its settings (:class:`KnockoutSettings`), its job
(:class:`KnockoutJob`) and ``INSTRUMENT``, which the run layer discovers
(:func:`mech.runs.instruments.discover`). This module is loaded without its package's ``__init__`` (which
imports torch), so ``mech --help`` stays light: everything heavy is imported inside the job's methods.

Writes into ``--out``: ``knockout.json`` (``model``, ``data`` and :meth:`KnockoutResult.to_json
<mech.measure.knockout.KnockoutResult.to_json>`: ``change.{edge}`` per window in percent, ``layers``,
``windows``, ``edges``, ``n``, ``n_kept``, ``p_clean``, ``p_knocked``, ``forward_equivalents``, ...; read
back as :class:`~mech.measure.knockout.record.KnockoutRecord`, ``KnockoutJob.record``),
``knockout.safetensors`` (the whole :class:`~mech.measure.knockout.KnockoutResult`, per sample:
``KnockoutResult.load``) and ``knockout.png`` (:func:`mech.figures.knockout.knockout_curves`). The
measurement: :func:`mech.measure.knockout.attention_knockout` per batch, assembled by
``KnockoutResult.concat`` (docs/knockout.md).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mech import words as W
from mech.errors import ConfigError
from mech.runs.instruments import Instrument
from mech.runs.settings import ShardedSettings

if typing.TYPE_CHECKING:
    from mech.measure.knockout.record import KnockoutRecord

__all__ = ["INSTRUMENT", "KnockoutJob", "KnockoutSettings", "edge_sets"]

Anchor = Literal["center", "start"]
#: the sources and targets an edge may name: a token group or ``last`` (the answer position)
ENDS = (*W.names(W.TOKEN_GROUPS), "last")


def edge_sets(edges: typing.Sequence[str]) -> list[list[tuple[str, str]]]:
    """``["image->last", "image->last+bos->last"]`` -> ``[[("image", "last")], [("image", "last"), ("bos",
    "last")]]``: one edge set per string, its edges joined by ``+``.

    Raises:
        ConfigError: a string that is not ``SOURCE->TARGET[+SOURCE->TARGET...]`` with names in :data:`ENDS`.
    """
    out = []
    for text in edges:
        group = []
        for edge in str(text).split("+"):
            source, sep, target = edge.strip().partition("->")
            if not sep or source.strip() not in ENDS or target.strip() not in ENDS:
                raise ConfigError(
                    f"knockout edge {text!r}: write SOURCE->TARGET (an edge set: A->B+C->D; quote it in a "
                    f"shell), with SOURCE and TARGET among {', '.join(ENDS)} ('last' = the answer position)."
                )
            group.append((source.strip(), target.strip()))
        out.append(group)
    return out


@dataclass(frozen=True)
class KnockoutSettings(ShardedSettings):
    """``mech knockout``: block attention edges in a window of layers; the change of p(answer) per window."""

    n: int = field(default=64, metadata={"help": "number of samples"})
    edges: tuple[str, ...] = field(
        default=("image->last", "text->last", "last->last"),
        metadata={
            "help": "edges SOURCE->TARGET, each measured separately (an edge set blocked together: "
            "A->B+C->D); SOURCE, TARGET: " + " ".join(ENDS) + " (last = the answer position)"
        },
    )
    window: int = field(default=9, metadata={"help": "consecutive decoder layers blocked (Zhang et al.: 9)"})
    anchor: Anchor = field(
        default="center", metadata={"help": "window [l-k//2, l+k-k//2) (center) or [l, l+k) (start)"}
    )
    layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "window anchors (default: every decoder layer)"}
    )
    only_correct: bool = field(
        default=False,
        metadata={"help": "average only the correctly answered samples (Zhang et al.'s code)"},
    )

    command: typing.ClassVar[str] = "knockout"

    def __post_init__(self) -> None:
        super().__post_init__()
        edge_sets(self.edges)
        if not self.edges:
            raise ConfigError("knockout needs at least one edge, e.g. --edges 'image->last'.")
        if not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window={self.window!r}; the window is a number of decoder layers >= 1.")


class _Record:
    """``KnockoutJob.record``: :class:`~mech.measure.knockout.record.KnockoutRecord`, imported on first
    use (its package's ``__init__`` imports torch, and this module must stay light)."""

    def __get__(self, obj: Any, owner: type) -> type:
        from mech.measure.knockout.record import KnockoutRecord

        return KnockoutRecord


@dataclass(frozen=True)
class KnockoutJob:
    """``mech knockout`` as a :class:`~mech.runs.loop.Job`; ``knockout.json`` reads back as ``record``
    (:class:`~mech.measure.knockout.record.KnockoutRecord`)."""

    settings: KnockoutSettings
    record = _Record()  # not annotated: dataclass would read it (and import torch) at class creation

    def samples(self):
        from mech.prepare.data import load_data
        from mech.prepare.targets import without_untargetable

        data = load_data(self.settings.data, n=self.settings.n)
        return without_untargetable(data) if self.settings.only_correct else data  # gold answers needed

    def context(self, samples) -> None:
        return None

    def measure(self, m: Any, samples: list[dict], rows: range, context: None = None):
        """Knock out one batch; the result's parts (:meth:`mech.contract.Result.parts`)."""
        import torch

        from mech.conditions import condition_inputs
        from mech.engines.unembed import answer_logits
        from mech.measure.knockout import attention_knockout
        from mech.prepare.targets import answer_tokens

        s = self.settings
        batch = [samples[i] for i in rows]
        inputs = condition_inputs(m, batch, "complete")
        gold = None
        if s.only_correct:
            with torch.no_grad():
                gold = answer_tokens(m, batch, answer_logits(m, inputs).float())[0]
        ko = attention_knockout(
            m,
            inputs,
            edges=edge_sets(s.edges),
            window=s.window,
            layers=s.layers,
            anchor=s.anchor,
            only_correct=s.only_correct,
            gold_ids=gold,
            max_rows=max(64, 4 * s.batch_size),
        )
        return ko.parts()

    def assemble(self, store, samples: list[dict], out: Path, context: None = None) -> dict:
        from mech.figures import save_figure
        from mech.figures.knockout import knockout_curves
        from mech.measure.knockout import KnockoutResult
        from mech.runs.loop import concat_parts

        s = self.settings
        ko = concat_parts(KnockoutResult, store)  # every batch's contract part, joined
        ko.save(out / "knockout.safetensors")
        title = f"{s.model} on {s.data}\nattention knockout, {s.window}-layer windows ({s.anchor})"
        png = save_figure(knockout_curves(ko, title), out / "knockout.png")
        return {"model": s.model, "data": s.data, **ko.to_json(), "figures": [png.name]}

    def summary(self, rec: KnockoutRecord) -> list[str]:
        """The line ``mech knockout`` prints when done."""
        parts = []
        for e, values in rec.change.items():
            got = [(v, layer) for v, layer in zip(values, rec.layers) if v is not None]
            if got:
                v, layer = min(got)
                parts.append(f"{e} {v:.1f}% (window at layer {layer})")
        low = "; ".join(parts) or "no sample kept"
        return [f"n={rec.n} (kept {rec.n_kept}); largest drop of p(answer) per edge: {low}"]

    @staticmethod
    def captions(ko: KnockoutRecord) -> dict[str, str]:
        """Figure file name -> caption: what the figure plots and over how many samples."""
        return {
            "knockout.png": "Attention knockout: the change of the answer probability, "
            "100·(p_knocked − p_clean)/p_clean in percent, when the queries at each edge's target may not "
            f"attend to its source in a window of {ko.window} decoder layers ({ko.anchor} anchor), "
            f"per window; mean over the n = {ko.n_kept} kept of {ko.n} samples.",
        }

    @staticmethod
    def section(ko: KnockoutRecord, prefix: str) -> list[str]:
        """The ``report.md`` lines of ``knockout.json`` (``prefix``: the folder of its files)."""
        from mech.report_words import figure_lines, fmt

        edges = ko.edges
        lines = [
            f"### Attention knockout: {ko.window}-layer windows ({ko.anchor}), change of p(answer) in %",
            "",
            f"Mean over n = {ko.n_kept} of {ko.n} samples"
            + (" (the correctly answered ones)" if ko.only_correct else "")
            + f"; p(answer) without knockout {fmt(ko.p_clean, 3)}.",
            "",
            "| layer | window | " + " | ".join(edges) + " |",
            "|---" * (len(edges) + 2) + "|",
        ]
        for i, (layer, (lo, hi)) in enumerate(zip(ko.layers, ko.windows)):
            cells = " | ".join(fmt(ko.change[e][i], 1) for e in edges)
            lines.append(f"| {layer} | {lo}–{hi - 1} | {cells} |")
        lines.append("")
        for fig in ko.figures:
            lines += figure_lines(fig, prefix, KnockoutJob.captions(ko).get(fig))
        return lines


#: the command's registration, discovered by the run layer (:func:`mech.runs.instruments.discover`)
INSTRUMENT = Instrument(KnockoutSettings, "mech.measure.knockout.instrument:KnockoutJob")
