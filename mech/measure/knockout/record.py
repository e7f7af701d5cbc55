"""``knockout.json`` as a typed, frozen record (:class:`KnockoutRecord`): what the report, the figure and a
notebook read.

The file is written by ``mech knockout`` (:class:`mech.measure.knockout.instrument.KnockoutJob`):
``model``, ``data``, :meth:`KnockoutResult.to_json <mech.measure.knockout.KnockoutResult.to_json>`'s keys,
the figures, then the run loop's ``skipped``, ``identity`` and ``provenance``. Reading, checking and the
round trip: :class:`mech.contract.record.Record`. The per-sample tensors are in ``knockout.safetensors``
(:meth:`KnockoutResult.load <mech.measure.knockout.KnockoutResult.load>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mech.contract.record import CommandRecord

__all__ = ["KnockoutRecord"]


@dataclass(frozen=True)
class KnockoutRecord(CommandRecord):
    """``knockout.json``: attention knockout (Zhang et al. 2025), the change of p(answer) per window.

    Attributes:
        model, data: the model's and the data set's specs (absent from ``KnockoutResult.to_json()``
            alone, which this record also reads).
        metric: the measured quantity in words (percent change of the answer probability,
            ``100 · (p_knocked − p_clean) / p_clean``).
        window: decoder layers blocked per window; anchor: ``center`` (window
            ``[l − k//2, l + k − k//2)``)
            or ``start`` (``[l, l + k)``); layers: each window's anchor layer ``[window]``; windows: each
            window's ``[first, stop)`` layers, clipped to the model.
        edges: the edge sets (``SOURCE->TARGET``, joined by ``+``), in the order of the columns.
        only_correct: whether only correctly answered samples are kept; n: samples measured; n_kept: kept
            ones; kept: per sample ``[n]`` whether it is kept.
        change: edge -> per window ``[window]`` the mean percent change over the kept samples (``None``
            where none is kept).
        p_clean: mean answer probability without knockout over the kept samples (``None``: none kept);
            p_knocked: edge -> per window the mean answer probability with the edge blocked.
        answer: per sample ``[n]`` the answer token id; forward_equivalents: the cost in forward passes.
        note: present only when no sample was kept (says so); figures: ``knockout.png``.
        skipped, identity, provenance: the run loop's coverage (samples left out, with reasons), the
            run's identity (command, settings, sample ids hash) and the versions that wrote the file.

    Raises (from :meth:`from_json` / :meth:`read`):
        InputError: a missing key or a value of the wrong type (the message names the key).
    """

    COMMAND = "knockout"

    metric: str
    window: int
    anchor: str
    layers: tuple[int, ...]
    windows: tuple[tuple[int, ...], ...]
    edges: tuple[str, ...]
    only_correct: bool
    n: int
    n_kept: int
    kept: tuple[bool, ...]
    change: Mapping[str, tuple[float | None, ...]]
    p_clean: float | None
    p_knocked: Mapping[str, tuple[float | None, ...]]
    answer: tuple[int, ...]
    forward_equivalents: float
    model: str | None = None
    data: str | None = None
    note: str | None = None
    figures: tuple[str, ...] = ()
