"""What :func:`mech.measure.repair.core.repair` returns: the edit, its random controls, the curve, and every
reported number, as JSON (``repair.json``), per-sample predictions (``repair.safetensors``) and a tidy frame."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mech.measure.repair.edits import Edit, unit_label
from mech.measure.repair.select import Selection

__all__ = ["RepairResult"]


def _edit_json(e: Edit, limit: int = 50) -> dict:
    return {
        "kind": e.kind,
        "granularity": e.granularity,
        "size": e.size,
        "positions": e.positions,
        "alpha": e.alpha,
        "label": e.label,
        "units": [
            f"L{u[0]}.resid_post" if e.kind == "steer" else unit_label(e.granularity, u)
            for u in e.units[:limit]
        ],
    }


@dataclass(frozen=True)
class RepairResult:
    """A repair and its controls (numbers: :func:`mech.measure.repair.evaluate.summarize`).

    Attributes:
        model: the repaired model's spec; transferred_from: the model the selection was ranked on, when
            it is another one (None: re-ranked on this model).
        edit: the applied edit (without its tensors); selection: the ranking; k: units edited.
        target: the accuracy the effect is measured on (``prior_wrong`` where the data defines a prior
            that is wrong somewhere, else ``all``); scoring: the scoring of the accuracies.
        unedited, summaries: the unedited model's numbers and the numbers of ``"selected"`` and each
            ``"random j"`` edit.
        curve: per k: ``effect`` of the selected edit and of each random edit (``random``) on ``target``,
            and the selected edit's accuracies.
        controls: the random edits (units only). skipped: ``(id, reason)`` of samples not evaluated.
        ids: held-out sample ids in row order. predictions: label -> condition -> scoring -> LongTensor
            ``[sample]`` predicted candidate index.
    """

    model: str
    edit: Edit
    selection: Selection
    k: int
    target: str
    scoring: str
    option_scoring: str
    prior: str
    planted: tuple[str, ...] | None
    transferred_from: str | None
    unedited: dict
    summaries: dict
    curve: list
    controls: list
    n_fit: int
    n_held_out: int
    skipped: dict
    ids: list
    predictions: dict
    meta: dict = field(default_factory=dict)

    def control_summary(self) -> dict[str, Any]:
        """The selected edit's effect on ``target`` against the random edits': values, median, max, the
        ratio to the median (None when the median is not positive), whether it is above the maximum, and
        whether it is positive and at least 5× the median (a median ≤ 0 counts as 0)."""
        from mech.measure.repair.evaluate import target_effect

        sel = target_effect(self.summaries["selected"], self.unedited, self.target)
        rnd = [target_effect(self.summaries[c.label], self.unedited, self.target) for c in self.controls]
        med = statistics.median(rnd)
        return {
            "target": self.target,
            "selected": sel,
            "random": rnd,
            "median": med,
            "max": max(rnd),
            "ratio_to_median": sel / med if med > 0 else None,
            "above_max": sel > max(rnd),
            "at_least_5x_median": sel > 0 and sel >= 5 * max(med, 0.0),
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: settings, selection, ``unedited``, ``selected``, ``random`` (list), ``controls``
        (effects), ``curve``, coverage."""
        return {
            "model": self.model,
            "transferred_from": self.transferred_from,
            "label": f"selection ranked on {self.transferred_from}"
            if self.transferred_from
            else "re-ranked on this model",
            "edit": _edit_json(self.edit),
            "k": self.k,
            "target": self.target,
            "scoring": self.scoring,
            "option_scoring": self.option_scoring,
            "prior": self.prior,
            "planted": list(self.planted) if self.planted is not None else None,
            "selection": self.selection.to_json(),
            "n_fit": self.n_fit,
            "n_held_out": self.n_held_out,
            "unedited": self.unedited,
            "selected": self.summaries["selected"],
            "random": [{"edit": _edit_json(c, 10), **self.summaries[c.label]} for c in self.controls],
            "controls": self.control_summary(),
            "curve": self.curve,
            "coverage": {
                "held_out": self.n_held_out,
                "skipped": {k: [list(x) for x in v] for k, v in self.skipped.items()},
            },
            **self.meta,
        }

    def to_frame(self):
        """Tidy ``pandas.DataFrame``: one row per (edit, metric, group) with ``value``, ``lo``, ``hi``, ``n``;
        edits ``unedited``, ``selected``, ``random j``; metrics ``accuracy`` (groups all / prior_wrong /
        prior_right / unplanted / each category), ``white_image_accuracy``, ``consistency``, ``prior_to_gold``,
        ``answers_prior``, ``wrong_to_right``, ``right_to_wrong``, ``option_<letter>``."""
        import pandas as pd

        rows = []
        for label, s in {"unedited": self.unedited, **self.summaries}.items():
            acc = s["accuracy"]
            cells = [("accuracy", g, acc[g]) for g in ("all", "prior_wrong", "prior_right", "unplanted")]
            cells += [("accuracy", c, v) for c, v in acc["by_category"].items()]
            cells += [
                ("prior_to_gold", "prior_wrong", s["prior_to_gold"]),
                ("answers_prior", "prior_wrong", s["answers_prior"]),
            ]
            if "white_image" in s:
                cells += [
                    ("white_image_accuracy", "all", s["white_image"]["accuracy"]),
                    ("consistency", "complete&white_image", s["white_image"]["consistency"]),
                ]
            for name, group, v in cells:
                rows.append(
                    {
                        "edit": label,
                        "metric": name,
                        "group": group,
                        "value": v["value"],
                        "lo": v["ci95"][0],
                        "hi": v["ci95"][1],
                        "n": v["n"],
                    }
                )
            for f in ("wrong_to_right", "right_to_wrong"):
                rows.append(
                    {
                        "edit": label,
                        "metric": f,
                        "group": "all",
                        "value": s["flips"][f]["fraction"],
                        "lo": None,
                        "hi": None,
                        "n": s["flips"][f]["count"],
                    }
                )
            for letter, v in s.get("options", {}).get("distribution", {}).items():
                rows.append(
                    {
                        "edit": label,
                        "metric": f"option_{letter}",
                        "group": "all",
                        "value": v,
                        "lo": None,
                        "hi": None,
                        "n": s["options"]["n"],
                    }
                )
        return pd.DataFrame(rows)

    def tensors(self) -> dict[str, torch.Tensor]:
        """``pred.{label}.{condition}.{scoring}``: LongTensor ``[sample]`` (candidate index)."""
        return {
            f"pred.{lab}.{c}.{sc}": t.contiguous()
            for lab, d in self.predictions.items()
            for c, e in d.items()
            for sc, t in e.items()
        }

    def save(self, out: str | Path, figure: bool = True) -> dict[str, Any]:
        """Write ``repair.json``, ``repair.safetensors`` and (``figure``) ``repair.png`` into ``out`` (atomic);
        returns the JSON content."""
        from mech.results import write_json, write_tensors

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result = self.to_json()
        write_tensors(out / "repair.safetensors", self.tensors(), {"ids": self.ids})
        if figure:
            from mech.figures import save_figure
            from mech.figures.repair import repair_figure

            save_figure(repair_figure(result), out / "repair.png")
            result["figures"] = ["repair.png"]
        write_json(out / "repair.json", result)
        return result
