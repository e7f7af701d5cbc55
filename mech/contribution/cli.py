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

from mech.contribution import CORRUPTIONS, ESTIMATORS, PATCHED_GROUPS, Contributions, modality_contributions
from mech.contribution.donors import donor_batch, pair_donors
from mech.groups import GROUPS
from mech.errors import ConfigError, DataError


def cmd_contrib(args) -> dict:
    """Run ``mech contrib`` (module docstring); returns the ``contrib.json`` content."""
    import mech
    from mech.conditions import condition_inputs
    from mech.contribution.plots import contribution_figure
    from mech.data import load_data
    from mech.targets import decision_tokens
    from mech.results import BatchStore, write_json, write_tensors

    estimators = tuple(getattr(args, "estimators", None) or ESTIMATORS)
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ConfigError(f"unknown estimators {bad}; allowed: {', '.join(ESTIMATORS)}")
    m = mech.load(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    m.require_decoder_sequence("mech contrib")
    n = args.n or 64
    samples = [s for s in load_data(args.data, n=n) if s.get("images")]
    if not samples:
        raise DataError(f"{args.data}: no sample with an image; contributions need images — pass a data set with "
                        "images.")
    bs = max(1, int(getattr(args, "batch_size", 8) or 8))
    seed = int(getattr(args, "seed", 0) or 0)
    corruption = getattr(args, "ablation", None) or "resample"  # not --corruption: that is mech patch's condition
    if corruption not in CORRUPTIONS:
        raise ConfigError(f"--ablation {corruption!r}; allowed: {', '.join(CORRUPTIONS)}")
    resample = corruption == "resample" and "patching" in estimators
    donors = {g: pair_donors(samples, g, seed=seed) for g in PATCHED_GROUPS} if resample else {}
    out = Path(args.out)
    store = BatchStore(out / ".contrib.parts", {"model": args.model, "data": args.data, "n": len(samples),
                                                "batch_size": bs, "seed": seed, "estimators": list(estimators),
                                                "corruption": corruption})
    batches = range(0, len(samples), bs)
    for k, start in enumerate(tqdm(batches, desc="contrib", unit="batch")):
        if store.get(k) is not None:
            continue
        rows = range(start, min(start + bs, len(samples)))
        chunk = [samples[i] for i in rows]
        clean = condition_inputs(m, chunk, "complete")
        batch_donors = {g: donor_batch(m, samples, d, rows, g) for g, d in donors.items()}
        last = m.logits(clean)[torch.arange(len(chunk)), clean.groups.last()].float()
        answer, cf = decision_tokens(m, chunk, last)
        c = modality_contributions(m, clean, answer, cf, estimators=estimators, seed=seed, corruption=corruption,
                                   donors=batch_donors)
        store.put(k, {**c.per_sample, **c.components, "answer": answer, "counterfactual": cf})
    data = store.gather()
    meta = {"corruption": corruption if "patching" in estimators else None}
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
