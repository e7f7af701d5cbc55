"""``mech merge OUT``: assemble the results of sharded runs written into ``OUT``, computing nothing."""

from __future__ import annotations

from pathlib import Path

from mech.errors import ConfigError


def merge(out: str | Path) -> dict[str, dict]:
    """Assemble every command whose run is recorded in ``out`` (:mod:`mech.runs.folder`) from its
    parts, with the settings recorded there (:data:`mech.runs.shards.MERGE`: no batch is computed;
    eval loads its model only if a batch were missing, which merge refuses). Returns command -> that
    command's JSON content.

    Raises:
        ConfigError: ``out`` does not exist or records no run; batches missing (the message names them).
    """
    from mech.runs import folder
    from mech.runs.jobs import JOBS, job_for
    from mech.runs.loop import run
    from mech.runs.settings import COMMANDS
    from mech.runs.shards import MERGE

    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"mech merge {out}: no such directory; pass the --out directory of the sharded runs.")
    runs = {c: ident for c, ident in folder.recorded(out).items() if c in JOBS}
    if not runs:
        raise ConfigError(f"{out}: no run of mech {', '.join(JOBS)} is recorded there (.mech/*.identity.json); "
                          "pass the --out directory of the sharded runs.")
    results = {}
    for command, ident in runs.items():
        settings = COMMANDS[command](**ident["settings"], out=str(out))
        results[command] = run(job_for(settings), shard=MERGE)
    return results
