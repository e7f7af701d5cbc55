"""Shared argument parsing for the figure scripts in probes/ (one script per figure family)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MODELS = ["organism:image-biased", "organism:balanced", "organism:text-biased"]


def parse(description: str, n: int) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="model spec (repeat for several); default: the image-biased, balanced and text-biased organisms",
    )
    p.add_argument("--data", default="organism:shapes")
    p.add_argument("--n", type=int, default=n)
    p.add_argument("--out", default="figures")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    args = p.parse_args()
    args.model = args.model or DEFAULT_MODELS
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return args


def load(args):
    """``{spec: MechModel}`` and the samples (with images) of ``args.data``."""
    import mech
    from mech.prepare.data import load_data

    models = {spec: mech.load(spec, device=args.device, dtype=args.dtype) for spec in args.model}
    data = load_data(args.data, n=args.n)
    return models, data


def short(spec: str) -> str:
    return spec.split(":")[-1].rstrip("/").split("/")[-1]


def batches(items, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def save(fig, args, name: str) -> str:
    """Write ``fig`` to ``<out>/<name>.png`` (:func:`mech.figures.save_figure`), print and return its path."""
    from mech.figures import save_figure

    path = str(save_figure(fig, f"{args.out}/{name}.png"))
    print(path)
    return path
