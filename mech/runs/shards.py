"""Shards: which batches of a run this process computes (``mech eval``, ``attention``, ``patch``, ``contrib``).

A run over ``n`` samples in batches of ``B`` has ``ceil(n / B)`` batches, numbered from 0. Process
(*rank*) ``K`` of ``N`` computes the batches ``k`` with ``k % N == K`` and writes each finished
batch into the same parts store a single-process run uses (``<out>/.<command>.parts/``, see
:mod:`mech.runs.loop`), so the parts, and the files assembled from them, are the ones one process
would write. The invocation that, after its own batches, finds
every batch present assembles the final files; the others print how many batches are missing.
Rerunning without ``--shard`` (or ``mech merge <out>``) assembles too.

The shard comes from ``--shard K/N`` or, when a command is started by ``torchrun`` or ``accelerate
launch``, from their ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables; with CUDA available
and no ``--device`` (or ``--device cuda``) and no ``--device-map``, rank ``LOCAL_RANK`` runs on
``cuda:LOCAL_RANK``. No process group is created: ranks share nothing but the output directory
(a shared file system when they run on several machines).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mech.errors import ConfigError

__all__ = [
    "ENV_VARS",
    "MERGE",
    "WHOLE",
    "Pending",
    "Shard",
    "assembling_elsewhere",
    "claim",
    "device",
    "from_env",
    "n_batches",
    "parse_shard",
    "release",
    "resolve",
    "unfinished",
]

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Shard:
    """Which batches this process computes.

    Attributes:
        rank, world: this process is ``rank`` of ``world`` (``0 <= rank < world``).
        local_rank: ``LOCAL_RANK`` under a launcher (the GPU index on its machine), else None.
        source: ``"single"`` (no sharding), ``"--shard"``, ``"env"`` (a launcher's variables) or
            ``"merge"`` (assemble only: compute no batch at all).
    """

    rank: int = 0
    world: int = 1
    local_rank: int | None = None
    source: str = "single"

    @property
    def sharded(self) -> bool:
        return self.world > 1

    @property
    def computes(self) -> bool:
        return self.source != "merge"

    def mine(self, k: int) -> bool:
        """Whether batch ``k`` is computed by this process."""
        return self.computes and k % self.world == self.rank

    def owner(self, k: int) -> int:
        return k % self.world

    def __str__(self) -> str:
        return f"{self.rank}/{self.world}"


WHOLE = Shard()
MERGE = Shard(source="merge")


def n_batches(n: int, batch_size: int) -> int:
    """Number of batches of ``batch_size`` over ``n`` samples (the last may be smaller)."""
    return math.ceil(n / batch_size)


def parse_shard(value: str) -> Shard:
    """``"K/N"`` -> :class:`Shard` (rank K of N).

    Raises:
        ConfigError: not two integers ``K/N`` with ``N >= 1`` and ``0 <= K < N``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match:
        raise ConfigError(
            f"--shard {value!r}: pass K/N with integers 0 <= K < N, e.g. --shard 0/2 and "
            "--shard 1/2 for two processes."
        )
    rank, world = int(match.group(1)), int(match.group(2))
    if world < 1 or rank >= world:
        raise ConfigError(
            f"--shard {value}: the rank K must satisfy 0 <= K < N (N >= 1); for N={max(world, 1)} "
            f"processes pass --shard 0/{max(world, 1)} ... --shard {max(world, 1) - 1}/{max(world, 1)}."
        )
    return Shard(rank, world, source="--shard")


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; unset it, or start mech "
            "with torchrun / accelerate launch, which set it."
        ) from None


def from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard a launcher (``torchrun``, ``accelerate launch``) describes in ``RANK``,
    ``WORLD_SIZE`` and ``LOCAL_RANK``; None when ``WORLD_SIZE`` is unset or 1.

    Raises:
        ConfigError: non-integer values, ``RANK`` missing or outside ``0 .. WORLD_SIZE-1``.
    """
    environ = os.environ if environ is None else environ
    world = _int_env(environ, "WORLD_SIZE")
    if world is None or world <= 1:
        return None
    rank = _int_env(environ, "RANK")
    if rank is None or not 0 <= rank < world:
        raise ConfigError(
            f"WORLD_SIZE={world} but RANK={environ.get('RANK')!r}; RANK must be in 0..{world - 1} "
            "(torchrun sets both), or unset WORLD_SIZE to run in one process."
        )
    return Shard(rank, world, _int_env(environ, "LOCAL_RANK"), source="env")


def resolve(
    value: str | Shard | None, *, sharded: bool = True, environ: Mapping[str, str] | None = None
) -> Shard:
    """The shard of a command invocation.

    ``value`` is ``--shard``: a :class:`Shard`, a ``"K/N"`` string, or None. Only commands that
    shard (``sharded``) read the launcher's environment: a step run inside ``mech report`` passes
    ``"0/1"`` and computes every batch.

    Raises:
        ConfigError: a malformed ``--shard`` or launcher environment (:func:`parse_shard`,
            :func:`from_env`).
    """
    if not sharded:
        return WHOLE
    if isinstance(value, Shard):
        return value
    env = from_env(environ)
    if value not in (None, ""):
        shard = parse_shard(value)
        return Shard(shard.rank, shard.world, env.local_rank if env else None, "--shard")
    return env or WHOLE


def device(requested: str | None, device_map: str | None, shard: Shard) -> str | None:
    """The device for this rank: ``cuda:LOCAL_RANK`` under a launcher when CUDA is available,
    ``requested`` is unset or ``"cuda"``, and no ``device_map`` is given; else ``requested``."""
    if shard.local_rank is None or device_map or requested not in (None, "cuda"):
        return requested
    import torch

    if not torch.cuda.is_available():
        return requested
    return f"cuda:{shard.local_rank % max(torch.cuda.device_count(), 1)}"


@dataclass
class Pending:
    """A sharded invocation finished its own batches while others' are still missing."""

    command: str
    missing: list[int]
    total: int
    shard: Shard
    out: Path

    def message(self) -> str:
        owners = sorted({self.shard.owner(k) for k in self.missing})
        ranks = ", ".join(f"{r}/{self.shard.world}" for r in owners)
        return (
            f"mech {self.command} (shard {self.shard}): {self.total - len(self.missing)} of {self.total} batches "
            f"are done, {len(self.missing)} missing (shards {ranks}). The shard that finishes last writes the "
            f"results; otherwise rerun without --shard, or run `mech merge {self.out}` once every shard is done."
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "complete": False,
            "shard": str(self.shard),
            "batches": self.total,
            "missing": list(self.missing),
        }


def unfinished(command: str, missing: list[int], total: int, shard: Shard, out: Any) -> dict[str, Any]:
    """What a command returns when batches are missing after this shard's work: prints the
    :meth:`Pending.message` and returns :meth:`Pending.as_dict`.

    Raises:
        ConfigError: under ``mech merge`` (which computes nothing), naming the missing batches.
    """
    pending = Pending(command, list(missing), total, shard, Path(out))
    if not shard.computes:
        raise ConfigError(
            f"mech merge: {len(missing)} of {total} {command} batches are missing ({_span(missing)}); "
            f"run the shards that own them (batch k belongs to shard k % N), or rerun mech {command} "
            "without --shard to compute them."
        )
    print(pending.message())
    return pending.as_dict()


def _span(indices: list[int], show: int = 8) -> str:
    head = ", ".join(str(k) for k in indices[:show])
    return f"batches {head}" + (f" and {len(indices) - show} more" if len(indices) > show else "")


def claim(path: Path) -> bool:
    """Create ``path`` exclusively; True if this process got it (it assembles), False if another
    invocation did. Used only by sharded invocations, so that two ranks finishing together do not
    both write the figures; a single-process run or ``mech merge`` assembles regardless."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        return True
    except FileExistsError:
        return False


def release(path: Path) -> None:
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass


def assembling_elsewhere(command: str, claim_path: Path, out: Any) -> dict[str, Any]:
    """What a sharded invocation returns when another one holds the assembly claim."""
    print(
        f"mech {command}: every batch is done and another shard is writing the results (claim {claim_path}); "
        f"if that process died, rerun without --shard or run `mech merge {out}`."
    )
    return {"command": command, "complete": True, "assembled_by": "another shard"}
