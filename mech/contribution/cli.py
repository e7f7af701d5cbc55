"""``mech contrib``: contribution curves and Δ over a data set, batched and resumable.

Writes ``contrib.json`` (``curves``, ``cumulative``, ``imbalance_ratio``, ``overall`` per estimator),
``contrib.safetensors`` (per-sample ``[sample, layer, group]`` per estimator, plus the answer and
counterfactual token ids) and ``contrib.png``. The ``patching`` estimator's corruption is
``--ablation resample`` (default: donors paired once over the whole data set,
:mod:`mech.contribution.donors`, so results do not depend on the batch size) or ``noise``. Finished batches are kept in
``<out>/.contrib.parts/``; a rerun with the same model, data and settings continues from there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from mech.contribution import CORRUPTIONS, ESTIMATORS, PATCHED_GROUPS, Contributions
from mech.contribution.donors import contributions_for_rows, pair_donors
from mech.groups import GROUPS

PARTS = ".contrib.parts"
from mech.errors import ConfigError, DataError


def cmd_contrib(args) -> dict:
    """Run ``mech contrib`` (module docstring); returns the ``contrib.json`` content.

    Sharded like ``mech attention`` (:mod:`mech.parallel`: ``--shard K/N`` or torchrun's environment;
    rank K computes the batches k with k % N == K into the same parts store; the last to finish
    assembles). The model is loaded only when this process has batches to compute.
    """
    from mech import parallel
    from mech.data import load_data

    shard = parallel.resolve(args)
    estimators = tuple(getattr(args, "estimators", None) or ESTIMATORS)
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ConfigError(f"unknown estimators {bad}; allowed: {', '.join(ESTIMATORS)}")
    corruption = getattr(args, "ablation", None) or "resample"  # not --corruption: that is mech patch's condition
    if corruption not in CORRUPTIONS:
        raise ConfigError(f"--ablation {corruption!r}; allowed: {', '.join(CORRUPTIONS)}")
    n = args.n or 64
    samples = [s for s in load_data(args.data, n=n) if s.get("images")]
    if not samples:
        raise DataError(f"{args.data}: no sample with an image; contributions need images — pass a data set with "
                        "images.")
    bs = max(1, int(getattr(args, "batch_size", 8) or 8))
    seed = int(getattr(args, "seed", 0) or 0)
    resample = corruption == "resample" and "patching" in estimators
    donors = {g: pair_donors(samples, g, seed=seed) for g in PATCHED_GROUPS} if resample else {}
    out = Path(args.out)
    settings = {"model": str(args.model), "data": str(args.data), "n": n, "batch_size": bs, "seed": seed,
                "estimators": list(estimators), "ablation": corruption, "dtype": getattr(args, "dtype", None)}
    head = {**settings, "n_samples": len(samples), "args": settings}
    total = parallel.n_batches(len(samples), bs)
    store, todo, m = parallel.start(args, shard, out / PARTS, head, total, "contrib")
    try:
        for k in tqdm(todo, desc="contrib" + (f" (shard {shard})" if shard.sharded else ""), unit="batch"):
            rows = range(k * bs, min((k + 1) * bs, len(samples)))
            c, answer, cf = contributions_for_rows(m, samples, rows, donors, estimators=estimators, seed=seed,
                                                   corruption=corruption)
            store.put(k, {**c.per_sample, **c.components, "answer": answer, "counterfactual": cf})
    except BaseException:
        store.remove_if_empty()
        raise
    used = corruption if "patching" in estimators else None
    return parallel.finish("contrib", store, total, shard, out,
                           lambda: _assemble(store, args, out, estimators, used, resample))


def _assemble(store, args, out: Path, estimators, corruption, resample: bool) -> dict:
    """``contrib.json``, ``contrib.safetensors`` and ``contrib.png`` from the finished parts."""
    from mech.contribution.plots import contribution_figure
    from mech.results import write_json, write_tensors

    data = store.gather()
    meta = {"corruption": corruption}
    if resample:
        meta["patching_without_donor"] = {g: int(torch.isnan(data["patching"][:, 0, GROUPS.index(g)]).sum())
                                          for g in PATCHED_GROUPS}
    contrib = Contributions({e: data[e] for e in estimators}, meta=meta,
                            components={k: v for k, v in data.items() if k.startswith("dla.")})
    result = {"model": args.model, "data": args.data, **contrib.to_json()}
    write_tensors(out / "contrib.safetensors", data, {"groups": ",".join(contrib.groups)})
    contribution_figure(result, out / "contrib.png", f"{args.model} on {args.data} (n={result['n']})")
    result["figures"] = ["contrib.png"]
    write_json(out / "contrib.json", result)
    print(f"wrote {out / 'contrib.json'}")
    return result
