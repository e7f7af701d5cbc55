"""``mech attention --model SPEC --data SPEC [--n N] [--out DIR] [--batch-size B]``.

Writes into ``--out``: ``attention.json`` (DESIGN.md keys: ``layers``, ``groups``, ``mass``,
``token_share``, ``mdi``; plus ``aei``, ``efficiency``, metadata ``model``, ``data``, ``n``,
``query``), ``attention.safetensors`` (per-sample ``mass [sample, layer, head, group]``, ``density``,
``token_share``, ``counts``, ``spatial``) and the figures ``attention_mass.png``,
``attention_heads.png``, ``attention_image.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_N = 64


def _inputs(m: Any, samples: list[dict]):
    from mech.conditions import condition_inputs

    return condition_inputs(m, samples, "complete")


def cmd_attention(args) -> dict:
    """Attention mass over a data set, in batches of ``args.batch_size`` (``args.query``, default
    ``"last"``). Returns the ``attention.json`` content.

    Raises:
        UnsupportedArchitectureError: a cross-attention family (Mllama), before anything is computed.
        SpecError, DataError: as :func:`mech.load` and :func:`mech.data.load_data`.
    """
    from tqdm.auto import tqdm

    import mech
    from mech.attention import AttentionMass, attention_mass, plots
    from mech.data import load_data

    m = mech.load(args.model, device=getattr(args, "device", None), dtype=getattr(args, "dtype", None),
                  device_map=getattr(args, "device_map", None))
    m.require_decoder_sequence("mech attention")
    data = load_data(args.data, n=args.n or DEFAULT_N)
    samples = list(data.samples)
    query = getattr(args, "query", None) or "last"
    size = max(1, int(getattr(args, "batch_size", 8) or 8))
    parts = []
    with tqdm(total=len(samples), unit="sample", desc="mech attention") as bar:
        for start in range(0, len(samples), size):
            chunk = samples[start:start + size]
            parts.append(attention_mass(m, _inputs(m, chunk), query=query))
            bar.update(len(chunk))
    am = AttentionMass.concat(parts)
    out = Path(args.out)
    meta = {"model": str(args.model), "data": str(args.data), "n": len(samples), "query": am.query,
            "ids": [s.get("id") for s in samples], "skipped": len(getattr(data, "skipped", []))}
    am.save(out, meta)
    title = f"{args.model} on {args.data}"
    figures = [plots.mass_curves(am, out / "attention_mass.png", f"Attention mass per group: {title}")]
    if "image" in am.groups and float(am.token_share[:, am.groups.index("image")].max()) > 0:
        figures.append(plots.head_heatmap(am, out / "attention_heads.png", "image"))
        first = next((i for i, s in enumerate(samples) if s.get("images")), None)
        if first is not None:
            fig = plots.image_overlay(am, samples[first]["images"][0], out / "attention_image.png", row=first)
            if fig is not None:
                figures.append(fig)
    # names relative to --out (as patch.json and contrib.json): same JSON whatever the directory
    summary = {**am.summary(), **meta, "figures": [Path(f).name for f in figures]}
    print(f"wrote {out / 'attention.json'}, {out / 'attention.safetensors'} and {len(figures)} figures")
    return summary
