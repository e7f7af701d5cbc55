"""The ``mech`` command line: ``mech <command> --model SPEC --data SPEC [--n N] [--out DIR] ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mech.errors import MechError

COMMANDS = {
    "eval": "accuracy per input condition and prediction consistency (the paper's Tables 1-2)",
    "attention": "attention mass to image / text / template / bos tokens per layer and head",
    "patch": "activation patching between complete and ablated inputs",
    "contrib": "layerwise modality-contribution curves and the imbalance ratio",
    "report": "eval -> attention -> patch -> contrib, written to report.md",
    "inspect": "load a model, prepare samples and print the architecture table and token groups",
    "merge": "assemble the results of sharded runs (--shard K/N, torchrun) found in an output directory",
}
# commands that run data-parallel (mech.parallel): --shard K/N, or torchrun's RANK/WORLD_SIZE/LOCAL_RANK
SHARDED = ("eval", "attention", "patch", "contrib")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="organism:balanced", help="HF id | local dir | organism:<name>")
    p.add_argument("--data", default="organism:shapes", help="organism:shapes | mmmu-pro:<dir> | jsonl:<file>")
    p.add_argument("--n", type=int, default=None, help="number of samples (default: the command's own)")
    p.add_argument("--out", default="runs/mech", help="output directory")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 ...")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto")
    p.add_argument("--device-map", default=None, help="e.g. auto (shards across GPUs with accelerate)")
    p.add_argument("--batch-size", type=int, default=8)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mech", description="Instruments for modality bias in multimodal LLMs.")
    sub = p.add_subparsers(dest="command", metavar="command")
    commands = {}
    for name, help_ in COMMANDS.items():
        commands[name] = sub.add_parser(name, help=help_, description=help_)
        if name == "merge":
            commands[name].add_argument("out", help="the --out directory of the sharded runs")
            continue
        _common(commands[name])
    for name in SHARDED:
        commands[name].add_argument("--shard", default=None, metavar="K/N",
                                    help="compute only the batches k with k %% N == K (0 <= K < N) into the same "
                                         "output; default: torchrun's RANK/WORLD_SIZE, else every batch")
    commands["attention"].add_argument("--query", default="last", help="last | answer | text")
    commands["report"].add_argument("--compare", nargs="*", default=None, metavar="MODEL",
                                    help="two (or more) model specs side by side; without names: "
                                         "organism:balanced organism:text-biased")
    commands["contrib"].add_argument("--estimators", nargs="+", default=None, help="attention patching dla")
    for name in ("contrib", "report"):
        commands[name].add_argument("--ablation", default="resample", choices=("resample", "noise"),
                                    help="how the patching estimator removes a token group: resample (another "
                                         "sample's embeddings of the group, default) or noise (Gaussian)")
    for name in ("contrib", "report", "eval", "attention", "patch"):
        commands[name].add_argument("--seed", type=int, default=0)
    ev = commands["eval"]
    ev.add_argument("--conditions", default=None,
                    help="comma list of mech.conditions.CONDITIONS (default: complete,white_image,image_only,"
                         "no_image,black_image,noise_image)")
    ev.add_argument("--method", default="score", choices=("score", "direct", "cot"))
    ev.add_argument("--scoring", default=None, choices=("letter", "option_text"))
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--no-progress", action="store_true")
    patch = commands["patch"]
    patch.add_argument("--corruption", default="white_image", help="a condition of mech.conditions.CONDITIONS")
    patch.add_argument("--direction", default="denoising", choices=("denoising", "noising"))
    patch.add_argument("--metric", default="logit_diff", choices=("logit_diff", "prob", "kl"))
    patch.add_argument("--sites", nargs="+", default=None, help="resid_pre resid_mid resid_post attn_out mlp_out z")
    patch.add_argument("--positions", nargs="+", default=None, help="token groups, e.g. image text last")
    return p


def _load(args):
    import mech

    return mech.load(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)


def cmd_inspect(args) -> dict:
    """Load, prepare ``--n`` samples, label token groups; write ``inspect.json``."""
    from mech.data import load_data
    from mech.results import write_json

    m = _load(args)
    samples = load_data(args.data, n=args.n or 4)
    inputs = m.prepare([s["images"] for s in samples], [s["question"] for s in samples])
    groups = inputs.groups
    arch = m.arch
    counts = groups.counts()
    result = {
        "model": args.model, "family": arch.model_type, "layers": arch.n_layers, "heads": arch.n_heads,
        "kv_heads": arch.n_kv_heads, "d_model": arch.d_model, "modality_ids": dict(arch.modality_ids),
        "groups": list(groups.names),
        "samples": [{"id": s["id"], "counts": dict(zip(groups.names, counts[i].tolist())),
                     "text_source": groups.text_source[i]} for i, s in enumerate(samples)],
    }
    out = write_json(Path(args.out) / "inspect.json", result)
    tok = m.tokenizer
    ids = inputs["input_ids"][0].tolist()
    row = [f"{tok.convert_ids_to_tokens(t)}|{groups.names[g] if g >= 0 else 'pad'}"
           for t, g in zip(ids, groups.labels[0].tolist())]
    print(f"{arch.model_type}: {arch.n_layers} layers x {arch.n_heads} heads, d_model {arch.d_model}")
    print("sample 0:", " ".join(row))
    print("group counts per sample:", counts.tolist())
    print(f"wrote {out}")
    return result


# command -> "module:function"; each instrument's module owns its command (imported lazily, so
# `mech --help` stays fast and a missing optional dependency only affects its own command)
HANDLERS = {
    "inspect": "mech.cli:cmd_inspect",
    "eval": "mech.evaluation:cmd_eval",
    "attention": "mech.attention:cmd_attention",
    "patch": "mech.patching:cmd_patch",
    "contrib": "mech.contribution:cmd_contrib",
    "report": "mech.report:cmd_report",
    "merge": "mech.parallel:cmd_merge",
}


def _handler(command: str):
    import importlib

    module, _, func = HANDLERS[command].partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("mech"):
            return None
        raise


def _check_numbers(args) -> None:
    """Refuse ``--n``/``--batch-size`` below 1 (they would silently fall back to the defaults)."""
    from mech.errors import ConfigError

    for flag, value in (("--n", getattr(args, "n", None)), ("--batch-size", getattr(args, "batch_size", None))):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}; pass a positive integer (or leave {flag} out for the default).")


def _check_launcher(args) -> None:
    """Under torchrun / accelerate launch, refuse commands that do not shard (every rank would
    compute and write the same files)."""
    from mech.errors import ConfigError
    from mech.parallel import from_env

    env = from_env()
    if env is not None and args.command not in SHARDED and args.command != "inspect":
        raise ConfigError(f"mech {args.command} runs in one process, but WORLD_SIZE={env.world} says it was started "
                          f"by a launcher; launch mech {' / '.join(SHARDED)} with torchrun (they shard their batches), "
                          f"then run mech {args.command} once without the launcher (it reuses their parts).")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    try:
        _check_numbers(args)
        _check_launcher(args)
        handler = _handler(args.command)
        if handler is None:
            raise MechError(f"`mech {args.command}` is not available in this version of mech yet; "
                            "`mech inspect` is.")
        handler(args)
    except MechError as exc:
        print(f"mech {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
