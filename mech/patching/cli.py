"""``mech patch``: activation patching between the complete and a corrupted condition.

Writes ``patch.json`` (``corruption``, ``direction``, ``metric``, ``clean_metric``,
``corrupted_metric``, ``effect.{site}.{positions}`` per layer), ``patch.safetensors`` (raw metrics,
effects) and one heatmap per site (``patch_{site}.png``).

Each finished batch goes to ``<out>/.patch.parts/`` as it is done; a rerun with the same model,
data and settings continues from there, and the final files are assembled from the parts. With
``--shard K/N`` (or under ``torchrun``) this process computes the batches ``k % N == K`` only
(:mod:`mech.parallel`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mech.patching.metrics import normalized_effect
from mech.targets import answer_tokens  # noqa: F401  (re-exported: notebooks and probes import it from here)

DEFAULTS = dict(corruption="white_image", direction="denoising", metric="logit_diff",
                sites=("resid_post", "attn_out", "mlp_out"), positions=("image", "text", "last"))
DEFAULT_N = 32
PARTS = ".patch.parts"


def _settings(args) -> dict:
    """The patching options of ``args`` with their defaults, checked before anything is loaded.

    Raises:
        ConfigError: unknown corruption, site, position group, direction or metric.
    """
    from mech.conditions import check_condition
    from mech.errors import ConfigError
    from mech.patching.align import POSITION_GROUPS
    from mech.patching.metrics import check_direction, check_metric
    from mech.patching.sites import check_site

    s = {"corruption": getattr(args, "corruption", None) or DEFAULTS["corruption"],
         "direction": getattr(args, "direction", None) or DEFAULTS["direction"],
         "metric": getattr(args, "metric", None) or DEFAULTS["metric"],
         "sites": list(getattr(args, "sites", None) or DEFAULTS["sites"]),
         "positions": list(getattr(args, "positions", None) or DEFAULTS["positions"])}
    check_condition(s["corruption"])
    check_direction(s["direction"])
    check_metric(s["metric"])
    for site in s["sites"]:
        check_site(site)
    bad = [p for p in s["positions"] if p not in POSITION_GROUPS]
    if bad:
        raise ConfigError(f"unknown position group(s) {bad}; valid: {', '.join(POSITION_GROUPS)}")
    return s


def header(args, samples: list[dict], settings: dict, size: int) -> dict:
    """What the parts were computed from; ``args`` holds what ``mech merge`` needs."""
    ids = "\n".join(str(s.get("id")) for s in samples)
    return {"command": "patch",
            "args": {"model": str(args.model), "data": str(args.data), "n": args.n or DEFAULT_N, "batch_size": size,
                     "dtype": getattr(args, "dtype", None), **settings},
            "n_samples": len(samples), "ids_hash": hashlib.sha256(ids.encode()).hexdigest()[:16]}


def _batch(m, chunk: list[dict], s: dict, bs: int):
    """Patch one batch; returns the part's tensors (sample axis first) and metadata."""
    from mech.conditions import FEATURE_CONDITIONS, condition_inputs
    from mech.patching import activation_patching

    clean = condition_inputs(m, chunk, "complete")
    # feature conditions corrupt the forward pass (activation_patching wraps it in corrupt_features)
    corruption = s["corruption"]
    corrupted = condition_inputs(m, chunk, "complete" if corruption in FEATURE_CONDITIONS else corruption)
    clean_logits = m.logits(clean)[torch.arange(len(chunk)), clean.groups.last()].float()
    a, c = answer_tokens(m, chunk, clean_logits)
    p = activation_patching(m, clean, corrupted, site=tuple(s["sites"]), positions=tuple(s["positions"]),
                            direction=s["direction"], metric=s["metric"], answer=a, counterfactual=c,
                            condition=corruption, normalize=False, max_rows=max(64, 4 * bs))
    tensors = {"clean_metric": p.clean_metric, "corrupted_metric": p.corrupted_metric,
               # rows per position group with at least one patched position (empty group -> NaN effect)
               "n_pairs": torch.tensor([[len(r) for r in p.patched_positions[g]] for g in p.groups]).T.long(),
               "batch.forward_equivalents": torch.tensor([p.forward_equivalents], dtype=torch.float64),
               "batch.n_patched_runs": torch.tensor([p.n_patched_runs], dtype=torch.long)}
    tensors.update({f"patched.{k}": v.movedim(-1, 0) for k, v in p.patched.items()})  # sample axis first
    for key in ("answer", "counterfactual"):
        if p.meta.get(key) is not None:
            tensors[key] = torch.tensor(p.meta[key], dtype=torch.long)
    meta = {"groups": list(p.groups), "layers": list(p.layers), "metric": p.metric, "align": p.align}
    return tensors, meta


def cmd_patch(args) -> dict:
    """Run ``mech patch`` (see the module docstring); returns the ``patch.json`` content, or, for a
    shard that finished while other shards' batches are missing, ``{"complete": False, ...}``.

    Raises:
        ConfigError: unknown corruption, site, position group, direction or metric (before loading);
            a malformed ``--shard``; ``mech merge`` with batches missing.
        SpecError, DataError, UnsupportedArchitectureError: as :func:`mech.load` and
            :func:`mech.data.load_data`.
    """
    from tqdm.auto import tqdm

    from mech import parallel
    from mech.data import load_data

    shard = parallel.resolve(args)
    s = _settings(args)
    samples = list(load_data(args.data, n=args.n or DEFAULT_N))
    bs = max(1, int(getattr(args, "batch_size", 8) or 8))
    out = Path(args.out)
    head = header(args, samples, s, bs)
    total = parallel.n_batches(len(samples), bs)
    store, todo, m = parallel.start(args, shard, out / PARTS, head, total, "patch")
    try:
        for k in tqdm(todo, desc="mech patch" + (f" (shard {shard})" if shard.sharded else ""), unit="batch"):
            tensors, meta = _batch(m, samples[k * bs:(k + 1) * bs], s, bs)
            store.put(k, tensors, meta)
    except BaseException:
        store.remove_if_empty()
        raise
    return parallel.finish("patch", store, total, shard, out, lambda: assemble(store, total, samples, s, args, out))


def assemble(store, total: int, samples: list[dict], s: dict, args, out: Path) -> dict:
    """Write ``patch.json``, ``patch.safetensors`` and the heatmaps from the ``total`` finished
    batches of ``store``; returns the ``patch.json`` content."""
    from mech.patching import PatchingResult
    from mech.patching.plots import heatmap
    from mech.results import write_json, write_tensors

    cat = store.collect(range(total))
    first = store.meta(0)
    groups, direction = tuple(first["groups"]), s["direction"]
    clean_m, corr_m = cat["clean_metric"], cat["corrupted_metric"]
    empty = cat["n_pairs"].sum(0) == 0  # [group]: no sample has a patched position there
    patched, effect = {}, {}
    for site in s["sites"]:
        patched[site] = cat[f"patched.{site}"].movedim(0, -1).contiguous()  # [layer, (head,) group, sample]
        eff = normalized_effect(patched[site], clean_m, corr_m, direction)
        eff[..., empty] = float("nan")
        effect[site] = eff
    answers = {k: cat[k].tolist() if k in cat else None for k in ("answer", "counterfactual")}
    fe = cat["batch.forward_equivalents"].tolist()
    res = PatchingResult(effect, patched, clean_m, corr_m, groups, list(first["layers"]), direction, first["metric"],
                         s["corruption"], first["align"], {}, sum(fe) / len(fe),
                         int(cat["batch.n_patched_runs"].sum()), meta=answers)
    result = {"model": args.model, "data": args.data, "n": len(samples), **res.to_json(),
              "clean_metric_per_sample": clean_m.tolist(), "corrupted_metric_per_sample": corr_m.tolist()}
    result["figures"] = []
    for site in s["sites"]:
        if res.effect[site].dim() == 2:
            png = heatmap(res.effect[site], res.groups, res.layers, out / f"patch_{site}.png",
                          f"{args.model}: {direction} {s['corruption']}, {first['metric']}, {site}")
            result["figures"].append(str(png.name))
    write_json(out / "patch.json", result)
    write_tensors(out / "patch.safetensors", res.tensors(), {"corruption": s["corruption"], "direction": direction,
                                                              "metric": first["metric"], "groups": ",".join(groups)})
    print(f"wrote {out / 'patch.json'}")
    return result
