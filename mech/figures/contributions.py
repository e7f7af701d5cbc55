"""Figures of the contribution curves and the imbalance ratio. Each returns a
:class:`matplotlib.figure.Figure`; write it with :func:`mech.figures.save_figure`.

Each reads ``contrib.json``'s typed record (:class:`mech.curves.record.ContribRecord`); a
:class:`mech.curves.Contributions` or a ``contrib.json`` dict is read into one at the boundary
(:func:`mech.curves.record.as_contrib_record`, which raises :class:`~mech.errors.InputError` naming the key
of content that is not ``contrib.json``'s)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import matplotlib.ticker
from matplotlib.figure import Figure

from mech.figures.style import GROUP_COLORS, OKABE_ITO, RC, SERIES, finish, new_figure, style, wrap

if TYPE_CHECKING:
    from mech.curves.record import ContribRecord

__all__ = [
    "COMPONENT_NAMES",
    "ESTIMATOR_STYLE",
    "HATCH",
    "TITLES",
    "UNITS",
    "as_contrib_json",
    "compare_figure",
    "contribution_figure",
    "decomposition_panel",
]

UNITS = {
    "attention": "attention mass (fraction)",
    "patching": "restored logit diff (logits)",
    "dla": "direct logit attribution (logits)",
    "decomposition": "Shapley share (logits)",
}
TITLES = {
    "attention": "attention mass",
    "patching": "patching (restore a removed group)",
    "dla": "direct logit attribution",
    "decomposition": "decomposition (Shapley)",
}
#: hatching of the decomposition's components in its stacked bars
HATCH = {"attn": "", "mlp": "////"}
COMPONENT_NAMES = {"attn": "attention", "mlp": "MLP"}


def _values(ys) -> list[float]:
    return [math.nan if y is None else float(y) for y in ys]


def _present(ys) -> bool:
    """Whether a curve has any non-zero value (a group the model has no tokens of is all zero)."""
    return any(y == y and y != 0 for y in _values(ys))


#: colour, line style and marker of each estimator's Δ curve: none of the token groups' colours
#: (GROUP_COLORS), so an estimator's line is never read as a group's
ESTIMATOR_STYLE = {
    "attention": (OKABE_ITO["black"], "-", "o"),
    "patching": (OKABE_ITO["purple"], "--", "s"),
    "dla": (OKABE_ITO["sky"], ":", "^"),
    "decomposition": (OKABE_ITO["green"], "-.", "D"),
}


def _ratio_label(contrib: ContribRecord) -> str:
    num, _, den = str(contrib.ratio).partition("/")
    return f"Δ = C({num}) / C({den or 'image'})"


def _headroom(ax, ys, share: float = 0.45) -> None:
    """Log-scale y limits with the top ``share`` of the axes free for the legend."""
    ys = [float(y) for y in ys if y == y and y > 0]
    if not ys:
        return
    lo, hi = min(min(ys), 1.0) / 1.5, max(max(ys), 1.0) * 1.5
    ax.set_ylim(lo, hi * (hi / lo) ** (share / (1 - share)))


def decomposition_panel(ax, contrib: Any, handles: dict) -> None:
    """Stacked bars per layer of the decomposition's Shapley shares by component × modality (solid:
    attention, hatched: MLP; positive parts stacked up, negative down) and the cumulative contribution of
    each modality over layers (lines, the embedding's share in layer 0), in logits, from
    ``contrib.decomposition`` (``contrib``: a :class:`~mech.curves.record.ContribRecord`, a
    :class:`mech.curves.Contributions` or ``contrib.json`` content, with a decomposition)."""
    from mech.curves.record import as_contrib_record

    contrib = as_contrib_record(contrib)
    dec = contrib.decomposition
    players = dec.players
    n_layers = len(next(iter(dec.components["attn"].values()), []))
    width = 0.8
    up, down = [0.0] * n_layers, [0.0] * n_layers
    for comp in ("attn", "mlp"):
        for g in players:
            ys = _values(dec.components[comp][g])
            base = [up[k] if y >= 0 else down[k] for k, y in enumerate(ys)]
            bars = ax.bar(
                range(n_layers),
                ys,
                width,
                bottom=base,
                color=GROUP_COLORS.get(g),
                hatch=HATCH[comp],
                edgecolor="white",
                lw=0.3,
                alpha=0.85,
                label=f"{COMPONENT_NAMES[comp]} · {g}",
            )
            handles.setdefault(f"{COMPONENT_NAMES[comp]} · {g}", bars)
            for k, y in enumerate(ys):
                if y == y:
                    if y >= 0:
                        up[k] += y
                    else:
                        down[k] += y
    for g, ys in (contrib.cumulative.get("decomposition") or {}).items():
        if g in players and _present(ys):
            ax.plot(range(len(ys)), _values(ys), marker="o", color=GROUP_COLORS.get(g), label=g)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.5 * (hi - lo))  # the top third free for the legend of the components
    ax.legend(list(handles.values()), list(handles), fontsize=5.5, loc="upper left", handlelength=1.2, ncol=2)


def _num(x) -> str:
    """``x`` with two decimals; a missing value (JSON null, NaN: no estimate) as an en dash."""
    return "–" if x is None or x != x else f"{x:.2f}"


def as_contrib_json(contrib: Any) -> Mapping[str, Any]:
    """``contrib.json`` content: ``contrib`` itself when it is one, ``to_json()`` of a
    :class:`~mech.curves.record.ContribRecord` or a :class:`mech.curves.Contributions`. (The figures read
    the record instead: :func:`mech.curves.record.as_contrib_record`.)"""
    from mech.curves.contributions import Contributions
    from mech.curves.record import ContribRecord

    return contrib.to_json() if isinstance(contrib, (Contributions, ContribRecord)) else contrib


def contribution_figure(contrib: Any, title: str = "") -> Figure:
    """``contrib``: a :class:`~mech.curves.record.ContribRecord`, a :class:`mech.curves.Contributions` or
    ``contrib.json`` content.

    A grid of panels: one per estimator with the per-layer contribution of each group the model
    has (all-zero groups, e.g. video and audio for an image model, are left out), and a last panel
    with Δ (``contrib.ratio``) per layer for every estimator (log scale; dashed: Δ = 1), the
    overall Δ and its 95% interval in its legend. One legend of the groups for all panels. The
    ``decomposition`` panel (:func:`decomposition_panel`) has stacked bars by component × modality and
    the cumulative curves instead of per-layer lines, with its own legend of the components.

    Raises:
        InputError: ``contrib`` is content that is not ``contrib.json``'s (the message names the key).
    """
    from mech.curves.record import as_contrib_record

    contrib = as_contrib_record(contrib)
    ests = list(contrib.curves)
    n_panels = len(ests) + 1
    ncols = 2 if n_panels > 1 else 1
    nrows = -(-n_panels // ncols)
    handles = {}
    with style():
        fig = new_figure(3.5 * ncols / 1.45 + 0.3, 2.05 * nrows + 0.75)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, est in zip(axes, ests):
            if est == "decomposition" and contrib.decomposition is not None:
                decomposition_panel(ax, contrib, {})
                for line in ax.get_lines():  # the cumulative curves, one per modality
                    handles.setdefault(line.get_label(), line)
                ax.set_title(TITLES[est])
                ax.set_ylabel(UNITS[est])
                ax.axhline(0, color="black", lw=0.5)
                continue
            for g, ys in contrib.curves[est].items():
                if not _present(ys):
                    continue
                (line,) = ax.plot(range(len(ys)), _values(ys), marker="o", label=g, color=GROUP_COLORS.get(g))
                handles.setdefault(g, line)
            ax.set_title(TITLES.get(est, est))
            ax.set_ylabel(UNITS.get(est, est))
            ax.axhline(0, color="black", lw=0.5)
        ax = axes[len(ests)]
        for k, est in enumerate(ests):
            ys = [y if y is not None and y > 0 else math.nan for y in _values(contrib.imbalance_ratio[est])]
            o = contrib.overall[est]
            lo, hi = o.ci95
            color, ls, marker = ESTIMATOR_STYLE.get(est, (SERIES[k % len(SERIES)], "-", "o"))
            ax.plot(
                range(len(ys)),
                ys,
                marker=marker,
                ls=ls,
                color=color,
                label=f"{est}: {_num(o.delta)} [{_num(lo)}, {_num(hi)}]",
            )
        ax.axhline(1, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        _headroom(ax, [y for line in ax.get_lines() for y in line.get_ydata()])
        ax.set_title("Δ per layer (overall Δ [95% CI])")
        ax.set_ylabel(_ratio_label(contrib))
        ax.legend(fontsize=6.5, loc="upper right", handlelength=1.2)
        for ax in axes[:n_panels]:
            ax.set_xlabel("decoder layer")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3, lw=0.5)
        for ax in axes[n_panels:]:
            ax.set_axis_off()
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=len(handles))
        if title:
            fig.suptitle(wrap(title, fig.get_figwidth() - 0.2, RC["figure.titlesize"]))
    return finish(fig)


def compare_figure(results: Mapping[str, Any], title: str = "") -> Figure:
    """Overall Δ with 95% intervals per estimator (log scale; dashed: Δ = 1), one bar per model;
    ``results``: model name -> :class:`~mech.curves.record.ContribRecord`, :class:`mech.curves.Contributions`
    or ``contrib.json`` content.

    Raises:
        InputError: a value is content that is not ``contrib.json``'s (the message names the key).
    """
    from mech.curves.record import as_contrib_record

    results = {name: as_contrib_record(r) for name, r in results.items()}
    models = list(results)
    first = next(iter(results.values()))
    ests = list(first.overall)
    width = 0.8 / len(models)
    with style():
        fig = new_figure(max(3.5, 1.2 + 0.45 * len(ests) * len(models)), 2.7)
        ax = fig.add_subplot()
        for k, name in enumerate(models):
            o = results[name].overall
            xs = [i + k * width for i in range(len(ests))]
            d = [o[e].delta for e in ests]
            err = [
                [d[i] - o[e].ci95[0] for i, e in enumerate(ests)],
                [o[e].ci95[1] - d[i] for i, e in enumerate(ests)],
            ]
            n = results[name].n
            ax.bar(
                xs,
                d,
                width,
                yerr=err,
                capsize=2.5,
                error_kw={"lw": 0.8},
                color=SERIES[k % len(SERIES)],
                label=name + (f" (n = {n})" if n else ""),
            )
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ests))], ests)
        ax.axhline(1, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel(f"overall {_ratio_label(first)}")
        ax.set_title(
            wrap(title or "Modality imbalance ratio by estimator (95% CI)", fig.get_figwidth() - 0.5)
        )
        fig.legend(loc="outside lower center", ncol=len(models))  # never over a bar or the Δ = 1 line
    return finish(fig)
