"""Writing results: JSON and safetensors only (no pickle), always atomically.

A result file either exists complete or not at all: each writer writes a temporary file in the
same directory, flushes it to disk, then ``os.replace``-s it over the target.

Results say what made them: every JSON object :func:`write_json` writes carries
:func:`provenance` (mech's version, torch's, transformers', nnsight's, and the hash of the
repository's ``requirements.lock``) under ``"provenance"``. Two processes that compute the same
result write the same bytes: JSON keeps the insertion order the code builds (never set or hash
order), and :func:`write_tensors` keeps its metadata in one entry of canonical JSON, because
safetensors' writer orders several entries differently in each process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "LOCK_FILE",
    "METADATA_KEY",
    "PROVENANCE",
    "BatchStore",
    "atomic_write",
    "json_ready",
    "provenance",
    "read_json",
    "read_metadata",
    "read_tensors",
    "remove_stale_temps",
    "with_provenance",
    "without_provenance",
    "write_json",
    "write_tensors",
    "write_text",
]

#: the key under which every JSON result carries :func:`provenance`
PROVENANCE = "provenance"
#: the lock file hashed into :func:`provenance`: next to pyproject.toml in a source checkout or
#: editable install (absent from a wheel install)
LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    mech_version = version("mech")
    if mech_version is None:
        from mech import __version__ as mech_version
    return (("mech", mech_version),) + tuple(
        (name, version(name)) for name in ("torch", "transformers", "nnsight")
    )


def provenance() -> dict[str, str | None]:
    """What made a result: ``{"mech", "torch", "transformers", "nnsight", "lock"}``.

    The versions are ``importlib.metadata``'s (None for a package that is not installed; mech's
    falls back to ``mech.__version__``). ``lock`` is ``"sha256:<hex>"`` of :data:`LOCK_FILE`, the
    repository's ``requirements.lock``, or None where there is none (a wheel install). Every JSON
    :func:`write_json` writes carries this under :data:`PROVENANCE`.
    """
    out: dict[str, str | None] = dict(_versions())
    try:
        out["lock"] = "sha256:" + hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    except OSError:
        out["lock"] = None
    return out


def with_provenance(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with :func:`provenance` as its last key (replacing any it had)."""
    return {**{k: v for k, v in obj.items() if k != PROVENANCE}, PROVENANCE: provenance()}


def without_provenance(obj: Any) -> Any:
    """``obj`` without its :data:`PROVENANCE` key (what identity checks compare: a run resumes
    whatever versions wrote its stored header); non-mappings are returned as they are."""
    return {k: v for k, v in obj.items() if k != PROVENANCE} if isinstance(obj, Mapping) else obj


def _clean(obj: Any) -> Any:
    """JSON-ready copy: tensors/arrays to lists, NaN/inf to None (strict JSON has neither)."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().tolist()
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (set, frozenset)):  # sorted: set order depends on the process (PYTHONHASHSEED)
        return [_clean(v) for v in sorted(obj, key=repr)]
    return obj


def json_ready(obj: Any) -> Any:
    """``obj`` as plain JSON values: tensors and arrays to lists, NaN/inf to None, mappings with
    string keys, sets sorted (what :func:`write_json` writes)."""
    return _clean(obj)


def _host() -> str:
    import socket

    return socket.gethostname().replace(".", "-") or "host"


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file in the same directory, which
    is flushed to disk and then ``os.replace``-d over ``path``; on any exception (Ctrl-C included)
    the temporary file is removed and ``path`` is untouched. Returns ``path``.

    Raises:
        WriteError: the file system refused (disk full, no permission): an ``OSError`` whose message
            names the file and the fix; nothing partial is left.
    """
    from mech.errors import MechError, WriteError

    path = Path(path)
    # a unique name created with the umask's permissions (mkstemp would make every result file 0600);
    # host and pid in the name let a later run remove what a killed process left (remove_stale_temps)
    tmp = str(path.parent / f".{path.name}.{_host()}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, MechError):
            err = WriteError(
                f"could not write {path}: {exc.strerror or exc}. Free disk space or fix the folder's "
                "permissions (or pass another --out), then rerun the same command: nothing partial "
                "was left and finished batches are kept."
            )
            err.errno = exc.errno
            raise err from exc
        raise
    return path


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` in ``folder`` that a process of this host
    that no longer runs left behind (``kill -9`` between writing and renaming); returns them."""
    gone = []
    folder = Path(folder)
    for p in folder.glob(".*.tmp") if folder.is_dir() else []:
        parts = p.name[: -len(".tmp")].rsplit(".", 3)
        if len(parts) != 4 or parts[1] != _host() or not parts[2].isdigit() or int(parts[2]) == os.getpid():
            continue
        try:
            os.kill(int(parts[2]), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except OSError:  # another user's process: alive
            continue
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON (NaN becomes null), atomically; a mapping gets
    :func:`provenance` as its last key (:func:`with_provenance`). Keys keep their insertion order;
    the same ``obj`` gives the same bytes in every process."""
    if isinstance(obj, Mapping):
        obj = with_provenance(obj)
    text = json.dumps(_clean(obj), indent=2, sort_keys=False, allow_nan=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")

    return atomic_write(Path(path), write)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON content of ``path`` (its :data:`PROVENANCE` included)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


METADATA_KEY = "mech"


def write_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write named tensors to ``.safetensors`` atomically (contiguous CPU copies).

    ``metadata`` (JSON-able) is stored as one safetensors metadata entry, :data:`METADATA_KEY`,
    holding canonical JSON (sorted keys); read it back with :func:`read_metadata`. One entry because
    safetensors' (Rust) writer orders several entries by a hash map seeded per process, so the same
    metadata gave different bytes in each process; the tensors' entries and data are already in a
    fixed order (dtype, then name). The same tensors and metadata give the same bytes everywhere.
    """
    data = {k: v.detach().cpu().contiguous() for k, v in sorted(tensors.items())}
    meta = (
        {METADATA_KEY: json.dumps(_clean(dict(metadata)), sort_keys=True, ensure_ascii=True)}
        if metadata
        else None
    )
    return atomic_write(Path(path), lambda tmp: save_file(data, tmp, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` given to :func:`write_tensors` for the file at ``path`` ({} if none)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        raw = (fh.metadata() or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file at ``path``, by name."""
    return load_file(str(path))


class BatchStore:
    """Per-batch tensors streamed to disk, so a long run resumes where it stopped.

    Layout: ``root/header.json`` (what the run is: model, data, settings) and one
    ``root/{index:06d}.safetensors`` per finished batch, each written atomically. Opening a store
    whose header differs from ``header`` clears the old batches (another run's results are never
    mixed in; with ``clear=False`` it raises ``ConfigError`` instead). ``get(i)`` returns a finished
    batch or None; ``gather()`` concatenates every batch along axis 0 in index order; ``collect()``
    does the same reading one batch at a time into preallocated tensors, zero-padding ragged
    trailing axes. Several processes may write disjoint batches of one store (:mod:`mech.runs.shards`).
    """

    def __init__(self, root: str | os.PathLike, header: Mapping[str, Any], *, clear: bool = True):
        self.root = Path(root)
        self.header = _clean(dict(header))
        head = self.root / "header.json"
        self.resumed = head.is_file() and without_provenance(read_json(head)) == self.header
        if not self.resumed and not clear:
            from mech.errors import ConfigError

            raise ConfigError(
                f"{self.root} holds batches of another run (or none); rerun the command itself with "
                "the model, data and settings of those batches."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.resumed:
            for old in self.root.glob("*.safetensors"):
                old.unlink()
            write_json(head, self.header)

    def _path(self, index: int) -> Path:
        return self.root / f"{index:06d}.safetensors"

    def has(self, index: int) -> bool:
        """Whether batch ``index`` is finished."""
        return self._path(index).is_file()

    def get(self, index: int) -> dict[str, torch.Tensor] | None:
        path = self._path(index)
        return read_tensors(path) if path.is_file() else None

    def put(
        self, index: int, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Write batch ``index`` atomically; ``metadata`` (JSON-able) is kept beside it (:meth:`meta`)."""
        write_tensors(self._path(index), tensors, metadata)

    def meta(self, index: int) -> dict[str, Any]:
        """The ``metadata`` given to :meth:`put` for batch ``index`` ({} if none)."""
        return read_metadata(self._path(index))

    @staticmethod
    def finished(root: str | os.PathLike, header: Mapping[str, Any]) -> list[int]:
        """Indices of the finished batches of a store at ``root`` written for ``header``, without
        creating or clearing anything ([] when there is no such store)."""
        root = Path(root)
        head = root / "header.json"
        if not head.is_file() or without_provenance(read_json(head)) != _clean(dict(header)):
            return []
        return sorted(int(p.stem) for p in root.glob("*.safetensors") if p.stem.isdigit())

    def remove_if_empty(self) -> None:
        """Delete the store (header and directory) if it holds no finished batch: a run that failed
        before finishing one leaves nothing behind."""
        if not self.indices():
            (self.root / "header.json").unlink(missing_ok=True)
            try:
                self.root.rmdir()
            except OSError:  # something else lives there (another process's batch): keep it
                pass

    def missing(self, total: int) -> list[int]:
        """Batch indices in ``0 .. total-1`` not finished yet."""
        done = set(self.indices())
        return [k for k in range(total) if k not in done]

    def indices(self) -> list[int]:
        return sorted(int(p.stem) for p in self.root.glob("*.safetensors") if p.stem.isdigit())

    def gather(self) -> dict[str, torch.Tensor]:
        parts = [self.get(i) for i in self.indices()]
        if not parts:
            return {}
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def collect(self, indices: list[int] | range | None = None) -> dict[str, torch.Tensor]:
        """Concatenate batches ``indices`` (default: all finished) along axis 0, in that order,
        reading one batch at a time into tensors allocated once (peak memory: the result plus one
        batch). A trailing axis whose size differs between batches is zero-padded to the largest.

        Raises:
            DataError: a batch is missing, or batches disagree in keys, ranks or dtypes.
        """
        from safetensors import safe_open

        from mech.errors import DataError

        indices = self.indices() if indices is None else list(indices)
        shapes: dict[str, list[list[int]]] = {}
        for i in indices:
            if not self._path(i).is_file():
                raise DataError(f"batch {i} is missing in {self.root}; rerun the command to compute it.")
            with safe_open(str(self._path(i)), "pt") as fh:
                keys = sorted(fh.keys())
                if shapes and keys != sorted(shapes):
                    raise DataError(
                        f"batch {i} in {self.root} has tensors {keys}, others {sorted(shapes)}; "
                        "delete the directory and rerun."
                    )
                for k in keys:
                    shapes.setdefault(k, []).append(list(fh.get_slice(k).get_shape()))
        out: dict[str, torch.Tensor] = {}
        row = dict.fromkeys(shapes, 0)  # next free row of each tensor (axis-0 sizes may differ between keys)
        for i in indices:
            part = self.get(i)
            for k, t in part.items():
                if k not in out:
                    dims = shapes[k]
                    if len({len(d) for d in dims}) != 1 or not dims[0]:
                        raise DataError(
                            f"tensor {k!r} has different ranks (or rank 0) across batches in {self.root}."
                        )
                    size = [sum(d[0] for d in dims)] + [
                        max(d[a] for d in dims) for a in range(1, len(dims[0]))
                    ]
                    out[k] = torch.zeros(size, dtype=t.dtype)
                if t.dtype != out[k].dtype:
                    raise DataError(
                        f"tensor {k!r} of batch {i} is {t.dtype}, of batch {indices[0]} {out[k].dtype}."
                    )
                out[k][(slice(row[k], row[k] + t.shape[0]),) + tuple(slice(0, s) for s in t.shape[1:])] = t
                row[k] += t.shape[0]
            del part
        return out
