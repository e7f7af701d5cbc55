"""``mech merge OUT``: assemble the results of sharded runs written into ``OUT``, computing nothing."""

from __future__ import annotations

from pathlib import Path

from mech.errors import ConfigError

__all__ = ["merge"]


def merge(out: str | Path) -> dict[str, dict]:
    """Assemble every command whose run is recorded in ``out`` (:mod:`mech.runs.folder`) from its
    parts, with the settings recorded there (:data:`mech.runs.shards.MERGE`: no batch is computed;
    eval loads its model only if a batch were missing, which merge refuses). Returns command -> that
    command's JSON content.

    Raises:
        ConfigError: ``out`` does not exist, is a file, or holds no parts of a run; batches missing (the message names them).
    """
    from mech.runs import folder
    from mech.runs.jobs import COMMANDS, JOBS, job_for
    from mech.runs.loop import run
    from mech.runs.shards import MERGE

    out = Path(out)
    how = (
        "parts are written by mech eval / attention / patch / contrib --out DIR, one process per --shard K/N "
        "(or under torchrun), into DIR/.<command>.parts/"
    )
    if not out.exists():
        raise ConfigError(
            f"mech merge {out}: no such directory (the path does not exist); pass the --out "
            f"directory the sharded runs wrote ({how})."
        )
    if not out.is_dir():
        raise ConfigError(
            f"mech merge {out}: is a file; pass the --out directory the sharded runs wrote ({how})."
        )
    runs = {c: ident for c, ident in folder.recorded(out).items() if c in JOBS}
    if not runs:
        raise ConfigError(
            f"mech merge {out}: no run of mech {', '.join(JOBS)} is recorded there (no "
            f".mech/<command>.identity.json, no parts); {how}. Run those first, then mech merge DIR."
        )
    results = {}
    for command, ident in runs.items():
        settings = COMMANDS[command](**ident["settings"], out=str(out))
        results[command] = run(job_for(settings), shard=MERGE)
    return results
