"""One run loop for every command: batches, shards, resume, the parts store, the assembly, the write.

A command is a :class:`Job`: its frozen settings, the samples it measures, the measurement of one
batch (tensors with the sample axis first, plus JSON-able metadata) and the assembly of every
batch's part into a result. :func:`run` owns everything else:

1. the output folder is checked and taken for the run's identity (:mod:`mech.runs.folder`);
2. the rows whose images the model's processor refuses (an aspect ratio or size outside its limits,
   :func:`mech.prepare.fit.usable_images`) are left out with their reason, counted under ``skipped``;
   the first run of an identity asks the processor and records them (``.mech/<command>.refused.json``),
   so resumed runs, other shards and ``mech merge`` batch the same rows without loading a model;
3. the batches ``0 .. ceil(n / batch_size) - 1`` are split over shards (``--shard K/N`` or a
   launcher's ``RANK``/``WORLD_SIZE``, :mod:`mech.runs.shards`); this process computes the batches
   ``k % N == K`` that the parts store ``<out>/.<command>.parts/`` does not hold yet, loading the
   model only when there is one, and writes each finished batch there atomically;
4. the invocation that finds every batch present (one process, the last shard, or ``mech merge``)
   takes the assembly claim, assembles, and writes ``<out>/<command>.json`` atomically, with the
   run's ``identity`` (settings, data ids hash) and provenance.

A killed run, rerun with the same settings, continues from its last finished batch and writes the
same bytes as an uninterrupted one. Adding an instrument is writing one :class:`Job` and registering
it (an ``instrument`` module, :func:`mech.runs.instruments.discover`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from mech.errors import DataError, Interrupted
from mech.prepare.data import Dataset, skipped_summary
from mech.prepare.fit import FitWarning, check_data_fit, usable_images
from mech.results import BatchStore, read_json, remove_stale_temps, write_json
from mech.runs import checks, folder, shards
from mech.runs.settings import Settings

__all__ = [
    "Job",
    "as_record",
    "concat_parts",
    "identity",
    "ids_hash",
    "load_model",
    "read_refused",
    "refuse_rows",
    "refused_path",
    "run",
]


class Job(Protocol):
    """What a command gives the run loop.

    Attributes:
        settings: the command's frozen :class:`~mech.runs.settings.Settings` (``.command`` names
            the files: ``<command>.json``, ``.<command>.parts/``).
    """

    settings: Settings

    def samples(self) -> Sequence[dict]:
        """The samples to measure, in order (cheap: no model; the ids make the run's identity); a
        :class:`~mech.prepare.data.Dataset` (its ``skipped`` rows are counted in the result) or a list."""

    def context(self, samples: Sequence[dict]) -> Any:
        """What the run derives once from all its samples, before any batch (donor pairs, checked
        options); given to every :meth:`measure` and to :meth:`assemble`. None when there is nothing."""

    def measure(
        self, m: Any, samples: Sequence[dict], rows: range, context: Any
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """One batch, ``samples[rows]`` (the whole list is given for jobs that pair samples across
        batches), on the loaded model ``m``: ``(tensors, metadata)``, metadata JSON-able. A job whose
        instrument returns a :class:`mech.contract.Result` returns its ``parts()`` (then
        ``Result.from_parts`` reads each batch back and ``Result.concat`` assembles them); otherwise
        every tensor's first axis is the batch's samples (``store.collect()`` concatenates them)."""

    #: the command's typed record (:class:`mech.contract.record.Record`): what :meth:`summary` and
    #: :meth:`section` read, made from the JSON content :meth:`assemble` returns (:func:`as_record`)
    record: type

    def assemble(self, store: BatchStore, samples: Sequence[dict], out: Path, context: Any) -> dict[str, Any]:
        """The result from every finished part (``samples``: what :meth:`samples` returned;
        ``store.get(k)``, ``store.meta(k)``, ``store.collect()``); writes the command's tensor files
        and figures into ``out`` and returns the JSON content."""

    @staticmethod
    def section(record: Any, prefix: str) -> list[str]:
        """The command's part of ``report.md`` (Markdown lines) from its typed :attr:`record`;
        ``prefix``: the folder of its figures relative to the report."""


def ids_hash(samples: Sequence[dict]) -> str:
    """A short hash of the samples' ids, in order: part of a run's identity."""
    return hashlib.sha256("\n".join(str(s.get("id")) for s in samples).encode()).hexdigest()[:16]


def identity(settings: Settings, samples: Sequence[dict]) -> dict[str, Any]:
    """The run's identity: its command, :meth:`Settings.identity` and the data's ids."""
    return {
        "command": settings.command,
        "settings": settings.identity(),
        "n_samples": len(samples),
        "ids_hash": ids_hash(samples),
    }


def load_model(settings: Settings, shard: shards.Shard):
    """``mech.load`` with the settings' model, dtype and device map, on this shard's device;
    transformers' loading bars only with ``settings.verbose``.

    Raises:
        SpecError, ConfigError, ProcessorError: as :func:`mech.load`.
    """
    import mech
    from mech.models.load import loading_bars

    with loading_bars(getattr(settings, "verbose", False)):
        return mech.load(
            settings.model,
            device=shards.device(settings.device, settings.device_map, shard),
            dtype=settings.dtype,
            device_map=settings.device_map,
        )


def run(
    job: Job,
    *,
    shard: shards.Shard | None = None,
    environ: Mapping[str, str] | None = None,
    model: Any = None,
    data: Any = None,
) -> dict[str, Any]:
    """Run ``job`` (module docstring) and return its JSON content, or, for a shard that finished
    while other shards' batches are missing, ``{"complete": False, "missing": [...], ...}``.

    Args:
        shard: which batches to compute (default: from ``settings.shard`` or the launcher's
            environment; :data:`mech.runs.shards.MERGE` computes none and only assembles).
        model: an already loaded :class:`~mech.MechModel` to use instead of loading ``settings.model``.
        data: what ``job.samples()`` returns, when the caller has it already (not loaded again).

    Raises:
        RunConflictError: ``settings.out`` holds this command's run with other settings.
        OutputError, DeviceError: ``--out`` unusable, a device or device map this machine lacks
            (:func:`mech.runs.checks.preflight`, before the data or the model is loaded).
        ConfigError: a malformed ``--shard``; batches missing under merge.
        Interrupted: Ctrl-C; the message says how many batches are finished (they are kept).
        MechError: whatever the job's data loading and measurement raise.
    """
    s = job.settings
    shard = shard or shards.resolve(getattr(s, "shard", None), sharded=s.sharded, environ=environ)
    checks.preflight(s)
    out = folder.check_out(s.out)
    data = job.samples() if data is None else data
    ident = identity(
        s, list(getattr(data, "samples", data))
    )  # the data as given; the image check is deterministic
    folder.claim(out, s.command, ident, overwrite=s.overwrite and shard.computes)
    size = s.batch_size
    root = out / f".{s.command}.parts"
    for where in (out, root, out / ".mech"):
        remove_stale_temps(where)  # left by a process killed between writing and renaming
    store, m, total = None, model, 0
    try:
        refused = read_refused(out, s.command, ident)
        if refused is None and shard.computes:  # this identity's first run: ask the processor, once
            m = m if m is not None else load_model(s, shard)
            refused = (
                usable_images(m.processor, list(getattr(data, "samples", data)))[1] if m.processor else []
            )
            write_json(
                refused_path(out, s.command), {"identity": ident, "refused": [list(r) for r in refused]}
            )
        data = refuse_rows(data, refused or [])
        samples = list(getattr(data, "samples", data))
        skipped = list(getattr(data, "skipped", [])) + (
            [] if isinstance(data, Dataset) else list(refused or [])
        )
        context = job.context(data)
        total = shards.n_batches(len(samples), size)
        done = set(BatchStore.finished(root, ident))
        todo = [k for k in range(total) if shard.mine(k) and k not in done]
        m = m if m is not None or not todo else load_model(s, shard)
        if m is not None and getattr(job, "decoder_sequence", True):
            m.require_decoder_sequence(f"mech {s.command}")  # before anything is computed
        if m is not None and todo:
            check_data_fit(m, data)  # one FitWarning per data set whose words the tokenizer lacks ...
        store = BatchStore(root, ident, clear=shard.computes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)  # ... not one more per batch from m.prepare
            _compute(job, m, store, data, context, todo, size, shard)
    except BaseException as exc:
        if store is not None:
            store.remove_if_empty()
        if not (out / f"{s.command}.json").exists() and not root.exists():
            refused_path(out, s.command).unlink(missing_ok=True)  # a failed first run leaves nothing behind
        folder.release_if_empty(out, s.command, ident)
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Interrupted):
            finished = len(BatchStore.finished(root, ident))
            raise Interrupted(
                f"interrupted: {finished} of {total} batches of mech {s.command} are written to {out}; "
                "rerun the same command to resume."
            ) from exc
        raise
    missing = store.missing(total)
    if missing:
        return shards.unfinished(s.command, missing, total, shard, out)
    flag = root / "assembling"
    if shard.sharded and not shards.claim(flag):
        return shards.assembling_elsewhere(s.command, flag, out)
    try:
        result = job.assemble(store, data, out, context)
        folder.still_owned(out, s.command, ident)
        result.setdefault("skipped", skipped_summary(skipped))  # the data set's rows left out
        result = {**result, "identity": ident}
        write_json(out / f"{s.command}.json", result)
    except KeyboardInterrupt as exc:
        raise Interrupted(
            f"interrupted while writing the results of mech {s.command}: all {total} batches are in "
            f"{out}; rerun the same command to write them."
        ) from exc
    finally:
        shards.release(flag)
    summary = getattr(job, "summary", None)
    for line in (summary(as_record(job, result)) if summary else []) + _summary_lines(result, out, s.command):
        print(f"mech {s.command}: {line}")
    return result


def as_record(job: Job, content: Mapping[str, Any]) -> Any:
    """``content`` (the command's JSON) as the job's typed record (``job.record``, a
    :class:`mech.contract.record.Record`), which its ``summary``, ``captions`` and ``section`` read; the
    content itself for a job that declares none.

    Raises:
        InputError: the content is not of the job's record (a file written by another command).
    """
    record = getattr(job, "record", None)
    return record.from_json(content) if record is not None else content


def concat_parts(result: type, store: BatchStore) -> Any:
    """The union of every finished batch of a job whose ``measure`` returns a contract result's ``parts()``:
    ``result.concat`` of ``result.from_parts`` of each batch, in batch order (:class:`mech.contract.Result`).

    Raises:
        DataError: a batch written by an older mech, from before the result contract (the message says to
            delete the parts folder and rerun: its batches are computed again).
        ConfigError: batches that disagree in a field that must be equal (``Result.concat``).
    """
    from mech.errors import InputError

    try:
        parts = [result.from_parts(store.get(k), store.meta(k)) for k in store.indices()]
    except InputError as exc:
        raise DataError(
            f"{store.root} holds batches in an older format ({exc}); delete that folder and rerun the "
            "same command (its batches are computed again)."
        ) from exc
    return result.concat(parts)


def refused_path(out: Path, command: str) -> Path:
    """Where a run records the rows whose images the processor refused: ``<out>/.mech/<command>.refused.json``."""
    return out / ".mech" / f"{command}.refused.json"


def read_refused(out: Path, command: str, ident: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """The ``(id, reason)`` rows refused by the first run of ``ident`` in ``out``, or None when none is
    recorded (a resumed run, another shard and ``mech merge`` read it, so they never load a model to know
    the batches)."""
    path = refused_path(out, command)
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("identity") != json.loads(json.dumps(dict(ident))):
        return None
    return [(str(i), str(r)) for i, r in record.get("refused", [])]


def refuse_rows(data: Any, refused: Sequence[tuple[str, str]]) -> Any:
    """``data`` without the ``refused`` rows (``(id, reason)``, from :func:`mech.prepare.fit.usable_images`:
    an image whose aspect ratio or size the processor refuses). A :class:`~mech.prepare.data.Dataset` comes
    back as a new one whose ``skipped`` rows include them, so every command's result counts them with
    their reason; a list comes back as a list.

    Raises:
        DataError: every row of ``data`` is refused (the message gives the reasons).
    """
    if not refused:
        return data
    ids = {i for i, _ in refused}
    keep = [x for x in getattr(data, "samples", data) if str(x.get("id")) not in ids]
    if not keep:
        reasons = sorted({r for _, r in refused})[:3]
        raise DataError(
            f"{getattr(data, 'name', 'the data')}: the processor refuses an image of every row "
            f"({len(refused)} rows), e.g. {reasons}; pass images within its limits."
        )
    if isinstance(data, Dataset):
        return dataclasses.replace(data, samples=keep, skipped=list(data.skipped) + list(refused))
    return keep


def _summary_lines(result: Mapping[str, Any], out: Path, command: str) -> list[str]:
    """What every command prints at the end: the skipped rows with their reasons, the files written."""
    lines = []
    sk = result.get("skipped") or {}
    if sk.get("count"):
        reasons = "; ".join(
            f"{r} ({k})" for r, k in sorted(sk.get("reasons", {}).items(), key=lambda x: -x[1])[:5]
        )
        lines.append(f"skipped {sk['count']} data rows: {reasons}")
    names = [f"{command}.json"] + [
        f"{command}{ext}" for ext in (".safetensors", ".md") if (out / f"{command}{ext}").is_file()
    ]
    names += [str(f) for f in result.get("figures", [])]
    lines.append(f"wrote {out}/: {', '.join(names)}")
    return lines


def _compute(
    job: Job,
    m: Any,
    store: BatchStore,
    samples: Sequence[dict],
    context: Any,
    todo: list[int],
    size: int,
    shard: shards.Shard,
) -> None:
    from tqdm.auto import tqdm

    s = job.settings
    desc = f"mech {s.command}" + (f" (shard {shard})" if shard.sharded else "")
    n = sum(len(range(k * size, min((k + 1) * size, len(samples)))) for k in todo)
    with tqdm(total=n, unit="sample", desc=desc, disable=not getattr(s, "progress", True) or not todo) as bar:
        for k in todo:
            rows = range(k * size, min((k + 1) * size, len(samples)))
            if not store.has(k):  # another process of the same run may have finished it meanwhile
                tensors, meta = job.measure(m, samples, rows, context)
                store.put(k, tensors, meta)
            bar.update(len(rows))
