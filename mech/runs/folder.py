"""An output folder holds one run per command: its identity is recorded, and other settings refuse.

``<out>/.mech/<command>.identity.json`` holds the identity of the run that owns ``<command>``'s
files in ``<out>`` (``<command>.json``, its tensors, figures and ``.<command>.parts/``). A run whose
identity differs refuses with :class:`~mech.errors.RunConflictError`, naming the folder and the
settings that differ, unless it was started with ``--overwrite``, which removes the other run's
files first. Runs with the same identity share the folder (shards, a resumed run, two identical
runs started together). The check and the record happen under a ``filelock`` lock
(``<out>/.mech/<command>.lock``), so two processes started together cannot both take the folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mech.errors import LockError, OutputError, RunConflictError
from mech.results import read_json, without_provenance, write_json

__all__ = [
    "LOCK_TIMEOUT_S",
    "check_out",
    "claim",
    "identity_path",
    "recorded",
    "release_if_empty",
    "still_owned",
]

LOCK_TIMEOUT_S = 120


def check_out(out: str | Path) -> Path:
    """``out`` as a directory path, before anything is loaded.

    Raises:
        OutputError: ``out`` (or a parent) is a file (a ``ConfigError``).
    """
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise OutputError(f"--out {out}: {p} is a file; pass a directory (it is created if missing).")
    return out


def _meta(out: Path) -> Path:
    return out / ".mech"


def identity_path(out: Path, command: str) -> Path:
    return _meta(out) / f"{command}.identity.json"


def recorded(out: str | Path) -> dict[str, dict[str, Any]]:
    """command -> the identity recorded for it in ``out`` ({} when none)."""
    meta = _meta(Path(out))
    found = {}
    for p in sorted(meta.glob("*.identity.json")) if meta.is_dir() else []:
        found[p.name[: -len(".identity.json")]] = without_provenance(read_json(p))
    return found


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    sa, sb = a.get("settings", {}), b.get("settings", {})
    diff = [
        f"{k}: {sa.get(k)!r} there, {sb.get(k)!r} here"
        for k in sorted(set(sa) | set(sb))
        if sa.get(k) != sb.get(k)
    ]
    for k in ("n_samples", "ids_hash"):
        if a.get(k) != b.get(k):
            diff.append(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here (the data's samples)")
    return diff


def _remove_files(out: Path, command: str) -> None:
    """Delete ``command``'s results in ``out``: its JSON and the files it names, tensors, parts."""
    result = out / f"{command}.json"
    names = [f"{command}.json", f"{command}.safetensors", f"{command}.md", f"{command}.png"]
    if result.is_file():
        try:
            names += [str(f) for f in json.loads(result.read_text()).get("figures", []) if "/" not in str(f)]
        except (json.JSONDecodeError, AttributeError):
            pass
    for name in names:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / f".{command}.parts", ignore_errors=True)


def claim(out: str | Path, command: str, identity: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Take ``out`` for ``command``'s run ``identity`` (module docstring).

    Raises:
        RunConflictError: ``out`` holds (or is writing) ``command``'s run with another identity and
            ``overwrite`` is False; the message names the folder and the settings that differ.
        LockError: another process holds the folder's lock longer than :data:`LOCK_TIMEOUT_S`.
    """
    out = check_out(out)
    _meta(out).mkdir(parents=True, exist_ok=True)
    identity = json.loads(json.dumps(dict(identity)))  # as it reads back from JSON
    lock = FileLock(str(_meta(out) / f"{command}.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise LockError(
            f"{out} is locked by another mech {command} process ({lock.lock_file} held for more than "
            f"{LOCK_TIMEOUT_S} s); wait for it to finish and rerun, or pass another --out."
        ) from None
    try:
        _claim_locked(out, command, identity, overwrite)
    finally:
        lock.release()


def _claim_locked(out: Path, command: str, identity: dict[str, Any], overwrite: bool) -> None:
    path = identity_path(out, command)
    old = without_provenance(read_json(path)) if path.is_file() else None
    if old is None and (out / f"{command}.json").is_file():
        old = {"settings": {"(unrecorded)": "a result written before run identities"}}
    if old is not None and old != identity:
        if not overwrite:
            diff = "; ".join(_differences(old, identity)[:6])
            raise RunConflictError(
                f"{out} holds a mech {command} run with other settings ({diff}). Runs never mix in one folder: "
                f"pass another --out, or --overwrite to replace that run."
            )
        _remove_files(out, command)
    if old != identity:
        write_json(path, identity)


def still_owned(out: str | Path, command: str, identity: Mapping[str, Any]) -> None:
    """Raise when ``out`` was taken by another run of ``command`` (``--overwrite``) while this one
    computed, so that its results are not written over the new run's.

    Raises:
        RunConflictError: the recorded identity is no longer ``identity``.
    """
    path = identity_path(Path(out), command)
    now = without_provenance(read_json(path)) if path.is_file() else None
    if now != json.loads(json.dumps(dict(identity))):
        raise RunConflictError(
            f"{out}: another mech {command} run with other settings replaced this one "
            "(--overwrite) while it computed; its results were not written. Rerun into another --out."
        )


def release_if_empty(out: str | Path, command: str, identity: Mapping[str, Any]) -> None:
    """Undo :func:`claim` for a run that failed before finishing anything: when ``out`` holds neither
    ``command``'s result nor its parts, its identity record goes (and ``.mech`` and ``out`` when they
    are left empty), so a failed run leaves nothing behind."""
    out = Path(out)
    if (out / f"{command}.json").exists() or (out / f".{command}.parts").exists():
        return
    path = identity_path(out, command)
    if path.is_file() and without_provenance(read_json(path)) == json.loads(json.dumps(dict(identity))):
        path.unlink()
        (_meta(out) / f"{command}.lock").unlink(missing_ok=True)
    for d in (_meta(out), out):
        try:
            d.rmdir()
        except OSError:  # not empty, or gone
            break
