"""``mech patch``: activation patching between the complete and a corrupted condition.

Writes ``patch.json`` (``corruption``, ``direction``, ``metric``, ``clean_metric``,
``corrupted_metric``, ``effect.{site}.{positions}`` per layer), ``patch.safetensors`` (raw metrics,
effects) and one heatmap per site (``patch_{site}.png``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mech.patching.metrics import normalized_effect
from mech.targets import answer_tokens  # noqa: F401  (re-exported: notebooks and probes import it from here)

DEFAULTS = dict(corruption="white_image", direction="denoising", metric="logit_diff",
                sites=("resid_post", "attn_out", "mlp_out"), positions=("image", "text", "last"))


def cmd_patch(args) -> dict:
    """Run ``mech patch`` (see the module docstring); returns the ``patch.json`` content."""
    import mech
    from mech.conditions import FEATURE_CONDITIONS, condition_inputs
    from mech.data import load_data
    from mech.patching import activation_patching
    from mech.patching.plots import heatmap
    from mech.results import write_json, write_tensors

    corruption = getattr(args, "corruption", None) or DEFAULTS["corruption"]
    direction = getattr(args, "direction", None) or DEFAULTS["direction"]
    metric = getattr(args, "metric", None) or DEFAULTS["metric"]
    sites = tuple(getattr(args, "sites", None) or DEFAULTS["sites"])
    positions = tuple(getattr(args, "positions", None) or DEFAULTS["positions"])
    m = mech.load(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    m.require_decoder_sequence("mech patch")
    samples = list(load_data(args.data, n=args.n or 32))
    bs = max(1, int(getattr(args, "batch_size", 8) or 8))
    parts = []
    for i in range(0, len(samples), bs):
        chunk = samples[i:i + bs]
        clean = condition_inputs(m, chunk, "complete")
        # feature conditions corrupt the forward pass (activation_patching wraps it in corrupt_features)
        corrupted = condition_inputs(m, chunk, "complete" if corruption in FEATURE_CONDITIONS else corruption)
        clean_logits = m.logits(clean)[torch.arange(len(chunk)), clean.groups.last()].float()
        a, c = answer_tokens(m, chunk, clean_logits)
        parts.append(activation_patching(m, clean, corrupted, site=sites, positions=positions, direction=direction,
                                         metric=metric, answer=a, counterfactual=c, condition=corruption,
                                         normalize=False, max_rows=max(64, 4 * bs)))
    res = parts[0]
    res.patched_positions = {g: [r for p in parts for r in p.patched_positions[g]] for g in res.groups}
    res.clean_metric = torch.cat([p.clean_metric for p in parts])
    res.corrupted_metric = torch.cat([p.corrupted_metric for p in parts])
    for s in sites:
        res.patched[s] = torch.cat([p.patched[s] for p in parts], dim=-1)
        eff = normalized_effect(res.patched[s], res.clean_metric, res.corrupted_metric, direction)
        empty = torch.tensor([not any(any(r) for p in parts for r in p.patched_positions[g]) for g in res.groups])
        eff[..., empty] = float("nan")
        res.effect[s] = eff
    out = Path(args.out)
    result = {"model": args.model, "data": args.data, "n": len(samples), **res.to_json(),
              "clean_metric_per_sample": res.clean_metric.tolist(),
              "corrupted_metric_per_sample": res.corrupted_metric.tolist()}
    result["forward_equivalents_per_patched_run"] = sum(p.forward_equivalents for p in parts) / len(parts)
    result["n_patched_runs"] = sum(p.n_patched_runs for p in parts)
    result["figures"] = []
    for s in sites:
        if res.effect[s].dim() == 2:
            png = heatmap(res.effect[s], res.groups, res.layers, out / f"patch_{s}.png",
                          f"{args.model}: {direction} {corruption}, {metric}, {s}")
            result["figures"].append(str(png.name))
    write_json(out / "patch.json", result)
    write_tensors(out / "patch.safetensors", res.tensors(), {"corruption": corruption, "direction": direction,
                                                              "metric": metric, "groups": ",".join(res.groups)})
    print(f"wrote {out / 'patch.json'}")
    return result
