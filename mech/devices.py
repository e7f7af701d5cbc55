"""Which devices this machine can compute on, checked before anything is loaded.

:func:`check_device`, :func:`check_device_map` and :func:`check_dtype` refuse a device, a device map or
a dtype this machine cannot use with a :class:`~mech.errors.DeviceError` that lists what is here and
names the fix; without them a missing GPU surfaced minutes later, after loading, as torch's
``AssertionError``. :func:`mech.load` calls :func:`check_device`; :func:`mech.runs.checks.preflight`
calls all three for a command (and re-exports them).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from mech.errors import DeviceError

__all__ = ["DEVICE_MAPS", "DEVICE_TYPES", "check_device", "check_device_map", "check_dtype"]

#: device types a run computes on
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
#: the named placements ``from_pretrained(device_map=...)`` takes (accelerate)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _present(torch: Any) -> str:
    """The devices this machine has, for a message."""
    found = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        found += ["cuda" if n == 1 else f"cuda (= cuda:0) .. cuda:{n - 1}"] if n else []
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found.append("xpu")
    return ", ".join(found)


def check_device(device: Any, *, flag: str = "--device") -> None:
    """Raise unless this machine can compute on ``device`` (None: the checkpoint's default, CPU).

    Raises:
        DeviceError: not a device string; a type mech does not compute on (``meta``, ...); CUDA,
            MPS or XPU absent; a GPU index past the machine's GPUs. The message lists what is here.
    """
    if device is None or device == "":
        return
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            f"{flag} {device!r} is not a device; pass cpu, cuda, cuda:N (a GPU index), mps or xpu "
            f"(this machine has: {_present(torch)})."
        ) from None
    if d.type not in DEVICE_TYPES:
        raise DeviceError(
            f"{flag} {device}: mech computes on {', '.join(DEVICE_TYPES)}, not {d.type}; pass one of "
            f"those (this machine has: {_present(torch)})."
        )
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; check the driver and "
                "CUDA_VISIBLE_DEVICES"
            )
            raise DeviceError(
                f"{flag} {device}: no CUDA GPU here ({why}); pass --device cpu, or run on a machine "
                "with a GPU."
            )
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            have = "1 CUDA GPU (cuda:0)" if n == 1 else f"{n} CUDA GPUs (cuda:0 .. cuda:{n - 1})"
            raise DeviceError(
                f"{flag} {device}: this machine has {have}; pass one of those, or --device cuda."
            )
    elif d.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(
                f"{flag} {device}: MPS (Apple GPUs) is not available here; pass --device cpu "
                f"(this machine has: {_present(torch)})."
            )
    elif d.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise DeviceError(
                f"{flag} {device}: no Intel XPU here; pass --device cpu "
                f"(this machine has: {_present(torch)})."
            )


def check_device_map(device_map: Any, device: Any = None) -> None:
    """Raise unless ``from_pretrained`` can take ``device_map`` here: one of :data:`DEVICE_MAPS`
    (accelerate installed) or a single device this machine has. A mapping (Python callers) is
    passed on unchecked.

    Raises:
        DeviceError: an unknown map, accelerate missing, or both a device and a device map given
            (the map places the model; the device would be ignored).
    """
    if device_map is None or device_map == "" or not isinstance(device_map, str):
        return
    if device not in (None, ""):
        raise DeviceError(
            f"--device {device} and --device-map {device_map}: pass one of them; the device map places "
            "the model's layers, so --device would be ignored."
        )
    if device_map in DEVICE_MAPS:
        if importlib.util.find_spec("accelerate") is None:
            raise DeviceError(
                f"--device-map {device_map} needs the accelerate package: pip install accelerate "
                "(or pass --device instead)."
            )
        return
    import torch

    try:
        torch.device(device_map)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            f"--device-map {device_map!r}: pass {', '.join(DEVICE_MAPS)}, or one device (cpu, cuda:0, "
            f"...) to put the whole model there (this machine has: {_present(torch)})."
        ) from None
    check_device(device_map, flag="--device-map")


def check_dtype(dtype: Any, device: Any) -> None:
    """Raise for ``bfloat16`` on a CUDA GPU that cannot compute in it (before Ampere), where torch
    would emulate it or fail deep inside a forward.

    Raises:
        DeviceError: the message names the dtypes that work there.
    """
    if dtype != "bfloat16" or device in (None, "") or not str(device).startswith("cuda"):
        return
    import torch

    d = torch.device(device)
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(d.index or 0)
        raise DeviceError(
            f"--dtype bfloat16 on {device} ({name}): this GPU does not compute in bfloat16; pass "
            "--dtype float16 or float32."
        )
