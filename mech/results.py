"""Writing results: JSON and safetensors only (no pickle), always atomically.

A result file either exists complete or not at all: each writer writes a temporary file in the
same directory, flushes it to disk, then ``os.replace``-s it over the target.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


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
    return obj


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name created with the umask's permissions (mkstemp would make every result file 0600)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON (NaN becomes null), atomically."""
    text = json.dumps(_clean(obj), indent=2, sort_keys=False, allow_nan=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")

    return _atomic(Path(path), write)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str] | None = None) -> Path:
    """Write named tensors to ``.safetensors`` atomically (contiguous CPU copies)."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return _atomic(Path(path), lambda tmp: save_file(data, tmp, metadata=meta))


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


class BatchStore:
    """Per-batch tensors streamed to disk, so a long run resumes where it stopped.

    Layout: ``root/header.json`` (what the run is: model, data, settings) and one
    ``root/{index:06d}.safetensors`` per finished batch, each written atomically. Opening a store
    whose header differs from ``header`` clears the old batches (another run's results are never
    mixed in). ``get(i)`` returns a finished batch or None; ``gather()`` concatenates every batch
    along axis 0 in index order.
    """

    def __init__(self, root: str | os.PathLike, header: Mapping[str, Any]):
        self.root = Path(root)
        self.header = _clean(dict(header))
        self.root.mkdir(parents=True, exist_ok=True)
        head = self.root / "header.json"
        self.resumed = head.is_file() and read_json(head) == self.header
        if not self.resumed:
            for old in self.root.glob("*.safetensors"):
                old.unlink()
            write_json(head, self.header)

    def _path(self, index: int) -> Path:
        return self.root / f"{index:06d}.safetensors"

    def get(self, index: int) -> dict[str, torch.Tensor] | None:
        path = self._path(index)
        return read_tensors(path) if path.is_file() else None

    def put(self, index: int, tensors: Mapping[str, torch.Tensor]) -> None:
        write_tensors(self._path(index), tensors)

    def indices(self) -> list[int]:
        return sorted(int(p.stem) for p in self.root.glob("*.safetensors"))

    def gather(self) -> dict[str, torch.Tensor]:
        parts = [self.get(i) for i in self.indices()]
        if not parts:
            return {}
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
