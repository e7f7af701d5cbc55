"""Benchmark: a full residual patching sweep (all layers × {image, text, last}) with prefix reuse and batching,
and its speed-up over TransformerLens' ``get_act_patch_resid_pre`` on the same model, in the same run (CPU).

    python benchmarks/bench_patching.py [--model organism:balanced] [--n 8] [--out runs/bench_patching.json]

Cost unit: a forward-equivalent = ``n_layers`` decoder-layer evaluations of the batch. mech counts the layer
evaluations of its patched runs (the two full clean/corrupted forwards are reported separately). The
like-for-like timing patches every single position (TL's ``[layer, pos]`` grid) in both libraries on one
unpadded sample, since TL's patching passes tokens only (no attention mask).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mech  # noqa: E402
from mech.measure.patching import activation_patching  # noqa: E402
from mech.results import write_json  # noqa: E402


def _model(spec: str):
    if spec != "tiny-llava-6":
        return mech.load(spec, attn_implementation="eager")
    import transformers as T

    from mech.testing.tiny import tiny_model

    base, proc = tiny_model("llava", attn_implementation="eager")
    cfg = base.config
    cfg.text_config.num_hidden_layers = 6
    torch.manual_seed(0)
    return mech.load(
        (T.LlavaForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval(), proc)
    )


def _samples(m, n):
    from mech.conditions import condition_inputs
    from mech.organisms import shapes

    samples = shapes.generate(n, split="test", seed=0)
    for s in samples:
        s["images"] = [s["image"]]
    return condition_inputs(m, samples, "complete"), condition_inputs(m, samples, "white_image")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="organism:balanced")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", default="runs/bench_patching.json")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        m = _model(args.model)
    except mech.MechError as exc:
        print(f"{args.model} unavailable ({exc}); using tiny-llava-6")
        args.model = "tiny-llava-6"
        m = _model(args.model)
    clean, corrupted = _samples(m, args.n)
    L = m.arch.n_layers

    t = time.perf_counter()
    sweep = activation_patching(m, clean, corrupted, sites="resid_pre", positions=("image", "text", "last"))
    t_sweep = time.perf_counter() - t
    base_fe = 2 / sweep.n_patched_runs  # the clean and corrupted full forwards, amortised
    print(
        f"sweep: {sweep.n_patched_runs} patched runs of {args.n} samples in {t_sweep:.2f}s; "
        f"{sweep.forward_equivalents:.3f} forward-equivalents per patched run "
        f"(+{base_fe:.3f} for the two full runs)"
    )

    # like for like against TransformerLens on one unpadded sample: every (layer, position)
    import torch.nn.functional as F
    from transformer_lens.patching import get_act_patch_resid_pre

    from mech.engines.transformerlens import WithInputs, boot_bridge

    row = int(clean["attention_mask"].sum(1).argmax())
    c1 = m.inputs({k: v[row : row + 1] for k, v in clean.items()})
    k1 = m.inputs({k: v[row : row + 1] for k, v in corrupted.items()})
    keep = c1["attention_mask"][0].bool()
    c1 = m.inputs({k: (v[:, keep] if k in ("input_ids", "attention_mask") else v) for k, v in c1.items()})
    k1 = m.inputs({k: (v[:, keep] if k in ("input_ids", "attention_mask") else v) for k, v in k1.items()})
    P = c1["input_ids"].shape[1]
    lc, lk = m.logits(c1)[0, -1], m.logits(k1)[0, -1].clone()
    a = int(lc.argmax())
    lk[a] = -torch.inf
    cf = int(lk.argmax())
    bridge = boot_bridge(m)
    t = time.perf_counter()
    _, cache = bridge.run_with_cache(c1["input_ids"], pixel_values=c1["pixel_values"])
    tl = get_act_patch_resid_pre(
        WithInputs(bridge, pixel_values=k1["pixel_values"]),
        k1["input_ids"],
        cache,
        lambda lg: lg[0, -1, a] - lg[0, -1, cf],
    )
    t_tl = time.perf_counter() - t
    masks = [F.one_hot(torch.tensor([i]), P).bool() for i in range(P)]
    t = time.perf_counter()
    grid = activation_patching(
        m,
        c1,
        k1,
        sites="resid_pre",
        positions=masks,
        answer=torch.tensor([a]),
        counterfactual=torch.tensor([cf]),
    )
    t_mech = time.perf_counter() - t
    err = float((grid.patched["resid_pre"][:, :, 0] - tl.float()).abs().max())
    print(
        f"[layer, pos] grid ({L}×{P} = {L * P} runs): TransformerLens {t_tl:.2f}s, mech {t_mech:.2f}s, "
        f"speed-up {t_tl / t_mech:.1f}x, max |difference| {err:.2e}; mech {grid.forward_equivalents:.3f} "
        "forward-equivalents per patched run"
    )
    result = {
        "model": args.model,
        "n_layers": L,
        "n_samples": args.n,
        "device": "cpu",
        "sweep": {
            "patched_runs": sweep.n_patched_runs,
            "seconds": t_sweep,
            "forward_equivalents_per_patched_run": sweep.forward_equivalents,
            "full_runs_amortised": base_fe,
            "effect_resid_pre": sweep.to_json()["effect"]["resid_pre"],
        },
        "grid_vs_transformer_lens": {
            "positions": P,
            "runs": L * P,
            "tl_seconds": t_tl,
            "mech_seconds": t_mech,
            "speedup": t_tl / t_mech,
            "max_abs_difference": err,
            "mech_forward_equivalents_per_patched_run": grid.forward_equivalents,
        },
    }
    write_json(args.out, result)
    assert sweep.forward_equivalents <= 0.6, sweep.forward_equivalents
    return result


if __name__ == "__main__":
    main()
