"""The ``mech`` command line: ``mech <command> --model SPEC --data SPEC [--n N] [--out DIR] ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mech.errors import MechError
from mech.runs.args import add_settings, settings_from
from mech.runs.settings import COMMANDS


def parser() -> argparse.ArgumentParser:
    """``mech`` and one subcommand per settings class (:data:`mech.runs.settings.COMMANDS`); every
    option is derived from its dataclass field (:mod:`mech.runs.args`), defaults shown in ``--help``."""
    p = argparse.ArgumentParser(prog="mech", description="Instruments for modality bias in multimodal LLMs.")
    sub = p.add_subparsers(dest="command", metavar="command")
    for name, cls in COMMANDS.items():
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        text = doc.split(": ", 1)[-1] if doc.startswith("``") else doc
        add_settings(sub.add_parser(name, help=text, description=text,
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter), cls)
    return p


def cmd_inspect(st) -> dict:
    """Load, prepare ``--n`` samples, label token groups; write ``inspect.json``."""
    import mech
    from mech.prepare.data import load_data
    from mech.results import write_json

    from mech.models.load import loading_bars

    with loading_bars(st.verbose):
        m = mech.load(st.model, device=st.device, dtype=st.dtype, device_map=st.device_map)
    samples = load_data(st.data, n=st.n)
    inputs = m.prepare([s["images"] for s in samples], [s["question"] for s in samples])
    groups = inputs.groups
    arch = m.arch
    counts = groups.counts()
    result = {
        "model": st.model, "family": arch.model_type, "layers": arch.n_layers, "heads": arch.n_heads,
        "kv_heads": arch.n_kv_heads, "d_model": arch.d_model, "modality_ids": dict(arch.modality_ids),
        "groups": list(groups.names),
        "samples": [{"id": s["id"], "counts": dict(zip(groups.names, counts[i].tolist())),
                     "text_source": groups.text_source[i]} for i, s in enumerate(samples)],
    }
    out = write_json(Path(st.out) / "inspect.json", result)
    tok = m.tokenizer
    ids = inputs["input_ids"][0].tolist()
    row = [f"{tok.convert_ids_to_tokens(t)}|{groups.names[g] if g >= 0 else 'pad'}"
           for t, g in zip(ids, groups.labels[0].tolist())]
    print(f"{arch.model_type}: {arch.n_layers} layers x {arch.n_heads} heads, d_model {arch.d_model}")
    print("sample 0:", " ".join(row))
    print("group counts per sample:", counts.tolist())
    print(f"wrote {out}")
    return result


def _check_launcher(command: str) -> None:
    """Under torchrun / accelerate launch, refuse commands that do not shard (every rank would
    compute and write the same files)."""
    from mech.errors import ConfigError
    from mech.runs.shards import from_env

    sharded = [c for c, cls in COMMANDS.items() if getattr(cls, "sharded", False)]
    env = from_env()
    if env is not None and command not in sharded and command != "inspect":
        raise ConfigError(f"mech {command} runs in one process, but WORLD_SIZE={env.world} says it was started "
                          f"by a launcher; launch mech {' / '.join(sharded)} with torchrun (they shard their batches), "
                          f"then run mech {command} once without the launcher (it reuses their parts).")


def _dispatch(command: str, settings) -> object:
    if command == "inspect":
        return cmd_inspect(settings)
    if command == "merge":
        from mech.runs.merge import merge

        return merge(settings.out)
    if command == "report":
        from mech.report import report

        return report(settings)
    from mech.runs.jobs import run_settings

    return run_settings(settings)


def main(argv: list[str] | None = None) -> int:
    """Run ``mech <command> ...``; a :class:`~mech.errors.MechError` is printed in one line (exit 1)."""
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    try:
        settings = settings_from(COMMANDS[args.command], args)
        _check_launcher(args.command)
        _dispatch(args.command, settings)
    except MechError as exc:
        print(f"mech {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
