"""``mech attention --model SPEC --data SPEC [--n N] [--out DIR] [--batch-size B] [--shard K/N]``.

Writes into ``--out``: ``attention.json`` (DESIGN.md keys: ``layers``, ``groups``, ``mass``,
``token_share``, ``mdi``; plus ``aei``, ``efficiency``, metadata ``model``, ``data``, ``n``,
``query``), ``attention.safetensors`` (per-sample ``mass [sample, layer, head, group]``, ``density``,
``token_share``, ``counts``, ``spatial``) and the figures ``attention_mass.png``,
``attention_heads.png``, ``attention_image.png``.

Each finished batch goes to ``<out>/.attention.parts/`` as it is done (nothing per sample is kept
in memory during the run); a rerun with the same model, data and settings continues from there,
and the final files are assembled from the parts. With ``--shard K/N`` (or under ``torchrun``) this
process computes the batches ``k % N == K`` only (:mod:`mech.parallel`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

DEFAULT_N = 64
PARTS = ".attention.parts"


def _inputs(m: Any, samples: list[dict]):
    from mech.conditions import condition_inputs

    return condition_inputs(m, samples, "complete")


def header(args, samples: list[dict], query: str, size: int) -> dict:
    """What the parts were computed from (a store with another header is cleared, never mixed in);
    ``args`` holds what ``mech merge`` needs to assemble without the original command line."""
    ids = "\n".join(str(s.get("id")) for s in samples)
    return {"command": "attention",
            "args": {"model": str(args.model), "data": str(args.data), "n": args.n or DEFAULT_N, "batch_size": size,
                     "query": query, "dtype": getattr(args, "dtype", None)},
            "n_samples": len(samples), "ids_hash": hashlib.sha256(ids.encode()).hexdigest()[:16]}


def cmd_attention(args) -> dict:
    """Attention mass over a data set, in batches of ``args.batch_size`` (``args.query``, default
    ``"last"``). Returns the ``attention.json`` content, or, for a shard that finished while other
    shards' batches are missing, ``{"complete": False, "missing": [...], ...}``.

    Raises:
        UnsupportedArchitectureError: a cross-attention family (Mllama), before anything is computed.
        ConfigError: unknown ``query``; a malformed ``--shard``; ``mech merge`` with batches missing.
        SpecError, DataError: as :func:`mech.load` and :func:`mech.data.load_data`.
    """
    from tqdm.auto import tqdm

    from mech import parallel
    from mech.attention import QUERIES, attention_mass
    from mech.data import load_data
    from mech.errors import ConfigError

    shard = parallel.resolve(args)
    query = getattr(args, "query", None) or "last"
    if query not in QUERIES:
        raise ConfigError(f"query={query!r}; allowed: {', '.join(QUERIES)} or a BoolTensor [batch, pos] mask.")
    data = load_data(args.data, n=args.n or DEFAULT_N)
    samples = list(data.samples)
    size = max(1, int(getattr(args, "batch_size", 8) or 8))
    out = Path(args.out)
    head = header(args, samples, query, size)
    total = parallel.n_batches(len(samples), size)
    store, todo, m = parallel.start(args, shard, out / PARTS, head, total, "attention")
    desc = "mech attention" + (f" (shard {shard})" if shard.sharded else "")
    try:
        with tqdm(total=sum(len(samples[k * size:(k + 1) * size]) for k in todo), unit="sample", desc=desc) as bar:
            for k in todo:
                chunk = samples[k * size:(k + 1) * size]
                am = attention_mass(m, _inputs(m, chunk), query=query)
                grid = torch.tensor(am.grid if am.grid else (-1, -1)).expand(len(chunk), 2)
                store.put(k, {**am.tensors(), "grid": grid}, {"groups": list(am.groups), "query": am.query})
                bar.update(len(chunk))
    except BaseException:
        store.remove_if_empty()
        raise
    return parallel.finish("attention", store, total, shard, out,
                           lambda: assemble(store, total, data, samples, args, out))


def assemble(store, total: int, data, samples: list[dict], args, out: Path) -> dict:
    """Write ``attention.json``, ``attention.safetensors`` and the figures from the ``total``
    finished batches of ``store`` (read one at a time); returns the ``attention.json`` content."""
    from mech.attention import AttentionMass, plots

    cat = store.collect(range(total))
    first = store.meta(0)
    grid = cat.pop("grid")[0].tolist()
    am = AttentionMass(mass=cat["mass"], density=cat["density"], groups=tuple(first["groups"]),
                       token_share=cat["token_share"], counts=cat["counts"], spatial=cat["spatial"],
                       n_image_tokens=cat["n_image_tokens"], grid=None if grid[0] < 0 else tuple(grid),
                       query=first["query"], n_query=cat["n_query"])
    meta = {"model": str(args.model), "data": str(args.data), "n": len(samples), "query": am.query,
            "ids": [s.get("id") for s in samples], "skipped": len(getattr(data, "skipped", []))}
    am.save(out, meta)
    title = f"{args.model} on {args.data}"
    figures = [plots.mass_curves(am, out / "attention_mass.png", f"Attention mass per group: {title}")]
    if "image" in am.groups and float(am.token_share[:, am.groups.index("image")].max()) > 0:
        figures.append(plots.head_heatmap(am, out / "attention_heads.png", "image"))
        row = next((i for i, s in enumerate(samples) if s.get("images")), None)
        if row is not None:
            fig = plots.image_overlay(am, samples[row]["images"][0], out / "attention_image.png", row=row)
            if fig is not None:
                figures.append(fig)
    # names relative to --out (as patch.json and contrib.json): same JSON whatever the directory
    summary = {**am.summary(), **meta, "figures": [Path(f).name for f in figures]}
    print(f"wrote {out / 'attention.json'}, {out / 'attention.safetensors'} and {len(figures)} figures")
    return summary
