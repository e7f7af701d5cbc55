"""Checks of where a run computes and writes, made before anything is loaded.

:func:`preflight` checks a command's settings in a few milliseconds: ``--out`` is a directory this
process can write (or can be created), ``--device`` names a device this machine has, and
``--device-map`` is one that ``from_pretrained`` takes, and ``--dtype`` is one that device computes in. Each refusal is a
:class:`~mech.errors.MechError` naming the fix, raised before the data set or the model is read;
without these checks a missing GPU surfaced minutes later, after loading, as torch's
``AssertionError``. :func:`mech.runs.loop.run` and the command line call it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mech.devices import DEVICE_MAPS, DEVICE_TYPES, check_device, check_device_map, check_dtype
from mech.errors import OutputError

#: the device checks live below loading and the runs (:mod:`mech.devices`: ``mech.load`` calls them too); they are
#: re-exported here, where :func:`preflight` runs them for a command
__all__ = [
    "DEVICE_MAPS",
    "DEVICE_TYPES",
    "check_device",
    "check_device_map",
    "check_dtype",
    "check_writable",
    "preflight",
]


def check_writable(out: str | Path) -> Path:
    """``out`` as a directory this process can write, created by nobody yet: a probe (a temporary
    directory, removed at once) is made in ``out`` or in its nearest existing parent, because
    ``os.access`` says yes to root on a read-only file system.

    Raises:
        OutputError: ``out`` or a parent is a file, or the folder cannot be written.
    """
    from mech.runs.folder import check_out

    out = check_out(out)
    base = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mech-probe-", dir=base))
    except OSError as exc:
        where = "" if base == out else f" (it would be created in {base})"
        raise OutputError(
            f"--out {out}: cannot write there{where}: {exc.strerror or exc}. Pass a --out in a folder "
            "you can write, or fix its permissions."
        ) from None
    return out


def preflight(settings: Any) -> None:
    """Check ``settings.out``, ``settings.device`` and ``settings.device_map`` (those it has) before
    anything is loaded (module docstring).

    Raises:
        OutputError, DeviceError: as :func:`check_writable`, :func:`check_device`, :func:`check_device_map`,
            :func:`check_dtype`.
    """
    device, device_map = getattr(settings, "device", None), getattr(settings, "device_map", None)
    check_device_map(device_map, device)
    if device_map in (None, ""):
        check_device(device)
        check_dtype(getattr(settings, "dtype", None), device)
    if getattr(settings, "out", None) is not None:
        check_writable(settings.out)
