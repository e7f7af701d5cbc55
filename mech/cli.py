"""The ``mech`` command line: ``mech [--debug] <command> --model SPEC --data SPEC [--n N] [--out DIR] ...``.

An error is printed in one line, ``mech <command>: error: <what was wrong and what to do>``, and
the exit code says its kind (the traceback only with ``--debug``, or ``MECH_DEBUG=1``):

====  =====================================================================================
0     success (a shard that finished its own batches while others are missing included)
1     mech refused: a :class:`~mech.errors.MechError` (bad value, spec, file, device, folder)
2     the command line does not parse (unknown option, malformed value; argparse's code)
3     an unexpected exception: a bug in mech; rerun with ``--debug`` and report the traceback
130   interrupted (Ctrl-C): finished batches are kept, the same command resumes
====  =====================================================================================
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from mech.deprecation import MechDeprecationWarning
from mech.errors import Interrupted, MechError, UsageError
from mech.runs.args import add_settings, settings_from
from mech.runs.jobs import COMMANDS

__all__ = ["DEBUG_HELP", "cmd_inspect", "main", "parser"]

#: exit codes (module docstring)
OK, REFUSED, USAGE, BUG, INTERRUPTED = 0, 1, 2, 3, 130
DEBUG_HELP = "on an error, print the traceback too (also: MECH_DEBUG=1)"


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`~mech.errors.UsageError` (printed in one line) instead of
    printing its usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        err = UsageError(f"{message}; see {self.prog} --help")
        err.prog = self.prog  # type: ignore[attr-defined]
        raise err


def parser() -> argparse.ArgumentParser:
    """``mech`` and one subcommand per settings class (:data:`mech.runs.jobs.COMMANDS`); every
    option is derived from its dataclass field (:mod:`mech.runs.args`), defaults shown in ``--help``."""
    p = _Parser(
        prog="mech",
        description="Instruments for modality bias in multimodal LLMs.",
        epilog="exit codes: 0 done, 1 refused (the message says what to change), 2 bad command line, "
        "3 a bug in mech (rerun with --debug), 130 interrupted (rerun to resume)",
    )
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", metavar="command")
    for name, cls in COMMANDS.items():
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        text = doc.split(": ", 1)[-1] if doc.startswith("``") else doc
        sp = sub.add_parser(
            name, help=text, description=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        add_settings(sp, cls)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


def cmd_inspect(st) -> dict:
    """Load, prepare ``--n`` samples exactly as the instruments do (the data set's own prompt: question,
    options and instruction, :func:`mech.conditions.condition_inputs` under ``complete``), label token
    groups; write ``inspect.json`` (per sample its prompt, group counts and ``text_source``)."""
    import mech
    from mech.conditions import condition_inputs, default_prompt
    from mech.models.load import loading_bars
    from mech.prepare.data import load_data, skipped_summary
    from mech.results import write_json

    with loading_bars(st.verbose):
        m = mech.load(st.model, device=st.device, dtype=st.dtype, device_map=st.device_map)
    data = load_data(st.data, n=st.n)
    samples = list(data)
    inputs = condition_inputs(m, samples, "complete")
    groups = inputs.groups
    arch = m.arch
    counts = groups.counts()
    result = {
        "model": st.model,
        "family": arch.model_type,
        "layers": arch.n_layers,
        "heads": arch.n_heads,
        "kv_heads": arch.n_kv_heads,
        "d_model": arch.d_model,
        "modality_ids": dict(arch.modality_ids),
        "groups": list(groups.names),
        "samples": [
            {
                "id": s["id"],
                "prompt": default_prompt(s),
                "counts": dict(zip(groups.names, counts[i].tolist())),
                "text_source": groups.text_source[i],
            }
            for i, s in enumerate(samples)
        ],
        "skipped": skipped_summary(getattr(data, "skipped", [])),
    }
    out = write_json(Path(st.out) / "inspect.json", result)
    tok = m.tokenizer
    ids = inputs["input_ids"][0].tolist()
    row = [
        f"{tok.convert_ids_to_tokens(t)}|{groups.names[g] if g >= 0 else 'pad'}"
        for t, g in zip(ids, groups.labels[0].tolist())
    ]
    print(f"{arch.model_type}: {arch.n_layers} layers x {arch.n_heads} heads, d_model {arch.d_model}")
    print("sample 0:", " ".join(row))
    print("group counts per sample:", counts.tolist())
    if result["skipped"]["count"]:
        print(
            f"skipped {result['skipped']['count']} data rows: "
            + "; ".join(f"{r} ({k})" for r, k in result["skipped"]["reasons"].items())
        )
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
        raise ConfigError(
            f"mech {command} runs in one process, but WORLD_SIZE={env.world} says it was started "
            f"by a launcher; launch mech {' / '.join(sharded)} with torchrun (they shard their batches), "
            f"then run mech {command} once without the launcher (it reuses their parts)."
        )


def _dispatch(command: str, settings) -> object:
    if command == "merge":
        from mech.runs.merge import merge

        return merge(settings.out)
    from mech.runs.checks import preflight

    preflight(settings)  # --out, --device, --device-map: before any data or model is loaded
    if command == "inspect":
        return cmd_inspect(settings)
    if command == "report":
        from mech.report import report

        return report(settings)
    from mech.runs.jobs import run_settings

    return run_settings(settings)


def _one_line_warning(command: str, debug: bool):
    """``warnings.showwarning`` for the command line: mech's own warnings (a data set the tokenizer does
    not cover, ...) as one line ``mech <command>: warning: ...``; others as Python prints them."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if debug or not category.__module__.startswith("mech"):
            return default(message, category, filename, lineno, file, line)
        where = f"mech {command}" if command else "mech"
        print(f"{where}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    return show


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``mech <command> ...``; returns the exit code (module docstring). Every error is one line
    on stderr; ``--debug`` (or ``MECH_DEBUG=1``) prints the traceback before it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("MECH_DEBUG", "") not in ("", "0")
    p, command = parser(), None
    # restored on return: main() may run inside a notebook or a test
    with warnings.catch_warnings():
        # an old spelling (--ablation) is said once, as one line, whatever the caller's warning filters
        warnings.simplefilter("default", MechDeprecationWarning)
        warnings.showwarning = _one_line_warning(_command_of(argv), debug)
        try:
            args, extra = p.parse_known_args(argv)
            if extra:
                where = f"mech {args.command}" if args.command else "mech"
                err = UsageError(f"unrecognized arguments: {' '.join(extra)}; see {where} --help")
                err.prog = where  # type: ignore[attr-defined]
                raise err
            if args.command is None:
                p.print_help()
                return USAGE
            command = args.command
            settings = settings_from(COMMANDS[command], args)
            _check_launcher(command)
            _dispatch(command, settings)
        except BaseException as exc:  # noqa: BLE001 - every error ends as one line and an exit code
            if isinstance(exc, SystemExit):  # --help
                raise
            return _report_error(exc, command, debug)
    return OK


def _command_of(argv: list[str]) -> str:
    """The subcommand named in ``argv`` (for messages printed while it is parsed); ``""`` if none."""
    return next((a for a in argv if a in COMMANDS), "")


def _report_error(exc: BaseException, command: str | None, debug: bool) -> int:
    """Print ``exc`` in one line (the traceback first under ``debug``); its exit code."""
    import traceback

    if debug:
        traceback.print_exception(exc)
    where = getattr(exc, "prog", None) or ("mech " + command if command else "mech")
    if isinstance(exc, KeyboardInterrupt):
        text = (
            _line(exc)
            if isinstance(exc, Interrupted)
            else ("interrupted; what was finished is kept: rerun the same command to resume.")
        )
        print(f"{where}: {text}", file=sys.stderr)
        return INTERRUPTED
    if isinstance(exc, MechError):
        print(f"{where}: error: {_line(exc)}", file=sys.stderr)
        return USAGE if isinstance(exc, UsageError) else REFUSED
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        print(
            f"{where}: error: out of memory ({_line(exc)[:200]}); pass a smaller --batch-size (or --device-map "
            "auto to spread the model over GPUs) and rerun the same command: finished batches are kept.",
            file=sys.stderr,
        )
        return REFUSED
    hint = (
        "Please report it with the traceback above"
        if debug
        else "Rerun with --debug for the traceback and report it"
    )
    print(
        f"{where}: internal error (a bug in mech, not in your input): {type(exc).__name__}: {_line(exc)[:500]}. "
        f"{hint}, with the command line.",
        file=sys.stderr,
    )
    return BUG


if __name__ == "__main__":
    sys.exit(main())
