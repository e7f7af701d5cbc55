"""Time and peak memory of one callable, on a CUDA GPU or the CPU: shared by the benchmarks.

* CUDA: wall seconds between ``torch.cuda.synchronize()`` calls; peak memory =
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (weights and everything resident
  included; ``base_bytes`` is what was allocated when the timed runs started).
* CPU: peak resident set size, read from ``/proc/self/status`` ``VmHWM`` after resetting the high-water
  mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), so each measurement has its own peak; where that
  reset is unavailable, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (process-lifetime peak, monotone).
  :data:`MEMORY_METHOD` names the method in use. tracemalloc is not used: it does not see torch's tensors.

Time = median of ``reps`` runs after ``warmup`` untimed runs.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        return bool(open("/proc/self/clear_refs", "wb", buffering=0).write(b"5"))
    except OSError:
        return False


def status_kib(field_name: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), None where unreadable."""
    try:
        with open("/proc/self/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith(field_name + ":")), None)
    except OSError:
        return None


MEMORY_METHOD = (
    "VmHWM of /proc/self/status, reset per measurement via /proc/self/clear_refs"
    if reset_peak() and status_kib("VmHWM") is not None
    else "resource.getrusage(RUSAGE_SELF).ru_maxrss (process peak)"
)
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated (weights included), reset per measurement"


def peak_mib() -> float:
    """Peak RSS in MiB since the last :func:`reset_peak` (or of the process, see :data:`MEMORY_METHOD`)."""
    kib = status_kib("VmHWM") if MEMORY_METHOD.startswith("VmHWM") else None
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


@dataclass(frozen=True)
class Timing:
    """One measurement: ``seconds`` (median of ``runs``), ``peak_bytes`` (largest peak over the timed runs),
    ``base_bytes`` (allocated / resident when the timed runs started); ``oom`` when the device ran out of
    memory (then the numbers are None and ``error`` says where)."""

    seconds: float | None
    peak_bytes: float | None
    base_bytes: float | None
    runs: tuple[float, ...] = ()
    oom: bool = False
    error: str | None = None
    extra: dict = field(default_factory=dict)


def is_oom(exc: BaseException) -> bool:
    """True for CUDA's out-of-memory error (and a RuntimeError that says so, as CPU allocators do)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free(cuda: bool) -> None:
    """Collect garbage (and CUDA's cached blocks) between measurements."""
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def measure(fn: Callable[[], object], *, cuda: bool, reps: int = 3, warmup: int = 1) -> Timing:
    """Time ``fn()`` (its return value is dropped at once) ``reps`` times after ``warmup`` runs.

    Returns a :class:`Timing`; an out-of-memory error (CUDA, or a RuntimeError saying so) gives
    ``Timing(oom=True)`` instead of raising. Any other exception propagates.
    """
    try:
        for _ in range(warmup):
            fn()
        free(cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            reset_peak()
            base = (status_kib("VmRSS") or 0) * 1024
        runs, peaks = [], []
        for _ in range(reps):
            if not cuda:
                reset_peak()
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - t)
            peaks.append(torch.cuda.max_memory_allocated() if cuda else peak_mib() * 2**20)
        return Timing(statistics.median(runs), max(peaks), base, tuple(runs))
    except BaseException as exc:  # noqa: BLE001 - only out-of-memory is turned into a result
        if not is_oom(exc):
            raise
        msg = str(exc).splitlines()[0][:300]
        del exc
        free(cuda)
        return Timing(None, None, None, oom=True, error=msg)
