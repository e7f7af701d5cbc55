"""The ``mech repair`` job: the fit stage once per process, the held-out batches on the run loop.

Writes ``repair.json`` (:meth:`mech.measure.repair.result.RepairResult.to_json`; read back as
:class:`~mech.measure.repair.record.RepairRecord`), ``repair.safetensors``
(per-sample predictions of every edit) and ``repair.png``. The fit split: ``--fit-data`` (default
``--data``); for ``organism:shapes`` it is drawn from the seed ``--fit-seed`` (ids ``test-<fit-seed>-*``),
the held-out split from ``--seed``; for a file data set the held-out split is its first ``--n`` rows and
the fit split the ``--fit-n`` rows after them. Each batch records the plan's selection and edits; the
assembly refuses batches that disagree (a resumed run on another device that ranked differently).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mech.errors import ConfigError, RunConflictError
from mech.measure.repair.instrument import RepairSettings
from mech.measure.repair.record import RepairRecord

__all__ = ["RepairJob"]


def _units(spec: tuple[str, ...] | None) -> list[tuple[int, int]]:
    out = []
    for u in spec or ():
        layer, sep, index = str(u).partition(":")
        if not sep or not layer.strip().isdigit() or not index.strip().isdigit():
            raise ConfigError(f"unit {u!r}; write units as LAYER:INDEX, e.g. --units 5:17 5:203")
        out.append((int(layer), int(index)))
    return out


@dataclass(frozen=True)
class RepairJob:
    """``mech repair`` as a :class:`~mech.runs.loop.Job`; ``repair.json`` reads back as ``record``."""

    settings: RepairSettings
    record: ClassVar[type[RepairRecord]] = RepairRecord
    _plans: dict = field(default_factory=dict, compare=False, repr=False)  # the fit stage, once per process

    def samples(self):
        from mech.prepare.data import load_data

        s = self.settings
        return load_data(s.data, n=s.n, seed=s.seed)

    def context(self, samples) -> dict:
        """The fit split (model-free)."""
        from mech.prepare.data import load_data

        s = self.settings
        spec = s.fit_data or s.data
        if spec.startswith("organism:"):
            if spec == s.data and s.fit_seed == s.seed:
                raise ConfigError(
                    f"--fit-seed {s.fit_seed} equals --seed: the fit and held-out splits would be the "
                    "same samples; pass another --fit-seed."
                )
            return {"fit": list(load_data(spec, n=s.fit_n, seed=s.fit_seed))}
        if spec == s.data:  # a file: the rows after the held-out ones
            rows = list(load_data(spec, n=s.n + s.fit_n))
            return {"fit": rows[len(samples) :]}
        return {"fit": list(load_data(spec, n=s.fit_n))}

    def plan(self, m, samples, context):
        from mech.measure.repair import make_plan

        if id(m) not in self._plans:
            s = self.settings
            selection = None
            if s.selection_from:
                from mech.measure.repair.select import Selection

                sel = json.loads(Path(s.selection_from).read_text())["selection"]
                selection = Selection.from_json(sel)
            self._plans.clear()
            self._plans[id(m)] = make_plan(
                m,
                context["fit"],
                list(samples),
                edit=s.edit,
                granularity=s.granularity,
                source=s.source,
                k=s.k,
                ks=s.ks,
                units=_units(s.units),
                selection=selection,
                positions=s.positions,
                alpha=s.alpha,
                n_random=s.n_random,
                prior=s.prior,
                batch_size=s.batch_size,
                seed=s.seed,
                max_fit_drop=s.max_fit_drop,
            )
        return self._plans[id(m)]

    def measure(self, m: Any, samples, rows: range, context: dict):
        from mech.measure.repair.core import plan_json, predict

        plan = self.plan(m, samples, context)
        tensors, skipped = predict(m, plan, [samples[r] for r in rows])
        return tensors, {"skipped": [list(x) for x in skipped], "plan": plan_json(plan)}

    def assemble(self, store, samples, out: Path, context: dict) -> dict:
        from mech.figures import save_figure
        from mech.figures.repair import repair_figure
        from mech.measure.repair import assemble
        from mech.measure.repair.core import plan_from_json
        from mech.results import write_tensors

        s = self.settings
        metas = [store.meta(k) for k in store.indices()]
        data = store.gather()
        plans = {json.dumps(mt["plan"], sort_keys=True) for mt in metas}
        if len(plans) != 1:
            raise RunConflictError(
                f"the batches in {out} were computed with different selections (ranked on another "
                "device or version); rerun with --overwrite."
            )
        plan = plan_from_json(metas[0]["plan"])
        skipped = [tuple(x) for mt in metas for x in mt.get("skipped", [])]
        result = assemble(plan, list(samples), data, skipped, s.model)
        j = {"model": s.model, "data": s.data, **result.to_json(), "figures": ["repair.png"]}
        write_tensors(out / "repair.safetensors", result.tensors(), {"ids": result.ids})
        save_figure(repair_figure(RepairRecord.from_json(j)), out / "repair.png")
        return j

    def summary(self, rec: RepairRecord) -> list[str]:
        """The lines ``mech repair`` prints when done."""
        c, sel = rec.controls, getattr(rec.selected.accuracy, rec.controls.target)
        base = getattr(rec.unedited.accuracy, c.target)
        lines = [
            f"{rec.edit.kind} {rec.k} {rec.edit.granularity} ({rec.label}): "
            f"accuracy {c.target.replace('_', ' ')} {base.value:.3f} -> "
            f"{sel.value:.3f} [{sel.ci95[0]:.3f}, {sel.ci95[1]:.3f}]",
            f"random edits of the same size: median effect {c.median:+.3f}, max {c.max:+.3f} "
            f"(selected {c.selected:+.3f})",
        ]
        return lines

    @staticmethod
    def section(r: RepairRecord, prefix: str) -> list[str]:
        """The ``report.md`` lines of ``repair.json`` (:func:`mech.measure.repair.section.repair_lines`)."""
        from mech.measure.repair.section import repair_lines

        return repair_lines(r, prefix)
