"""Benchmark: attribution patching (AtP, and its integrated-gradients variant) vs the exact
activation-patching sweep it estimates.

Not a test. Run ``python benchmarks/bench_attribution.py [--quick] [--n 64] [--seed 0]``; prints
Markdown tables whose numbers were all measured in this run.

**Fidelity on the organisms** (``organism:balanced``, ``organism:text-biased``; ``n`` samples of
``organism:shapes``, test split): clean = complete inputs; corrupted = ``white_image`` (the image
replaced by a white one) or ``visual_mean`` (visual token embeddings replaced by their batch mean);
sites ``resid_pre, attn_out, mlp_out`` at every layer; position groups ``image, text, last``; logit
difference; denoising (``--direction noising`` for the other one). Methods:

* ``atp`` — gradient at the corrupted run (Nanda 2023; Kramár et al. 2024, eq. 3);
* ``deeplift`` — gradient at the corrupted run with every nonlinearity's local derivative replaced by
  the finite-difference multiplier between the two runs (DeepLIFT, Shrikumar et al. 2017;
  :mod:`mech.measure.patching.attribution_deeplift`);
* ``ig×k`` — gradient averaged over ``k`` midpoints of the straight path between the two runs'
  decoder inputs (Sundararajan et al. 2017; EAP-IG, Hanna et al. 2024 §3).

Pearson r against exact patching (``mech.activation_patching``) two ways
(:func:`mech.measure.patching.attribution.compare_to_exact`):

* ``grid`` — over the normalized effects of the batch means, ``[layer, group]`` entries (6 × 3 = 18
  per site, 54 overall): the heatmap a researcher reads;
* ``per-sample`` — over the per-sample metric changes ΔM, ``[layer, group, sample]`` entries.

Cost columns: ``counted`` — forward-equivalents (atp, deeplift: 2 forwards + 1 activation backward ≈ 1
forward = 3; ig×k: 2 + 2k; exact: both unpatched forwards + decoder-layer evaluations of every
patched run / ``n_layers``, the engine reusing the unchanged prefix); ``×fwd`` — measured wall time
/ one plain forward of the same batch (median of repeats); ``FLOPs`` — matrix-multiply FLOPs
(``torch.utils.flop_counter``, forward and backward) / those of one plain forward.

**Speed** (without ``--quick``): a wider random LLaVA (12 layers, hidden 512, 8 heads) at ~600 tokens,
white-image-like corruption.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mech  # noqa: E402
from mech.measure.patching import activation_patching  # noqa: E402
from mech.measure.patching.attribution import attribution_patching, compare_to_exact  # noqa: E402

SITES = ("resid_pre", "attn_out", "mlp_out")
POSITIONS = ("image", "text", "last")
METHODS = (("atp", 1), ("deeplift", 1), ("ig", 1), ("ig", 2))
IMAGE_TOKEN = 4


def random_llava(hidden: int, layers: int, heads: int, image: int, patch: int):
    import transformers as T

    cfg = T.LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image,
            patch_size=patch,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=hidden,
            intermediate_size=3 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            vocab_size=256,
            max_position_embeddings=4096,
        ),
        image_token_index=IMAGE_TOKEN,
    )
    torch.manual_seed(0)
    return mech.load((T.LlavaForConditionalGeneration(cfg).eval(), None))


def raw_inputs(m, batch: int, n_text: int, image: int, patch: int, seed: int = 0):
    """(clean, corrupted) raw inputs: ``[bos, image × (image/patch)², text × n_text]``."""
    g = torch.Generator().manual_seed(seed)
    n_img = (image // patch) ** 2
    text = torch.randint(5, 256, (batch, n_text), generator=g)
    ids = torch.cat(
        [torch.ones(batch, 1, dtype=torch.long), torch.full((batch, n_img), IMAGE_TOKEN), text], 1
    )
    pix = torch.randn(batch, 3, image, image, generator=g)
    base = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    return m.inputs({**base, "pixel_values": pix}), m.inputs(
        {**base, "pixel_values": torch.full_like(pix, 2.0)}
    )


def organism_runs(m, n: int, seed: int):
    """``{corruption: (clean, corrupted, corrupted_context)}`` on ``n`` test samples of organism:shapes."""
    from mech.conditions import condition_inputs, feature_condition
    from mech.organisms import shapes

    samples = [dict(s, images=[s["image"]]) for s in shapes.generate(n, split="test", seed=seed)]
    clean = condition_inputs(m, samples, "complete")
    return {
        "white_image": (clean, condition_inputs(m, samples, "white_image"), None),
        "visual_mean": (clean, clean, lambda: feature_condition(m, clean, "visual_mean")),
    }


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(m, clean, corrupted, ctx, reps: int, direction: str, methods=METHODS) -> dict:
    """Exact sweep and every method on one pair of runs: wall times, counted costs, r."""
    with torch.no_grad():
        t_fwd = _median_time(lambda: m.model(**clean), reps)
        f_fwd = _flops(lambda: m.model(**clean))
    out: dict = {}
    kw = dict(positions=POSITIONS, direction=direction, corrupted_context=ctx)
    t_exact = _median_time(
        lambda: out.__setitem__("exact", activation_patching(m, clean, corrupted, sites=SITES, **kw)),
        max(1, reps // 2),
    )
    exact = out["exact"]
    rows = {"exact": dict(counted=2 + exact.forward_equivalents * exact.n_patched_runs, wall=t_exact / t_fwd)}
    for method, k in methods:
        label = method if method != "ig" else f"ig×{k}"
        t = _median_time(
            lambda: out.__setitem__(
                label, attribution_patching(m, clean, corrupted, sites=SITES, method=method, ig_steps=k, **kw)
            ),
            reps,
        )
        est = out[label]
        flops = _flops(
            lambda: attribution_patching(m, clean, corrupted, sites=SITES, method=method, ig_steps=k, **kw)
        )
        rows[label] = dict(
            counted=est.forward_equivalents,
            wall=t / t_fwd,
            flops=flops / f_fwd,
            grid=compare_to_exact(est, exact),
            sample=compare_to_exact(est, exact, on="delta"),
        )
    return dict(t_fwd=t_fwd, seq=clean["input_ids"].shape[1], batch=clean["input_ids"].shape[0], rows=rows)


def _r(d: dict) -> str:
    return " / ".join(f"{d[s]:.2f}" for s in SITES) + f" / **{d['overall']:.2f}**"


def fidelity_table(results: list[tuple[str, str, dict]]) -> list[str]:
    lines = [
        "| organism | corruption | method | counted fwd-eq | FLOPs ×fwd | wall ×fwd | r grid: "
        + " / ".join(SITES)
        + " / overall | r per-sample: "
        + " / ".join(SITES)
        + " / overall |",
        "|" + "---|" * 8,
    ]
    for name, corruption, res in results:
        for label, row in res["rows"].items():
            if label == "exact":
                lines.append(
                    f"| {name} | {corruption} | exact | {row['counted']:.1f} | | {row['wall']:.1f} | "
                    "(reference) | |"
                )
            else:
                lines.append(
                    f"| {name} | {corruption} | {label} | {row['counted']:.0f} | {row['flops']:.2f} | "
                    f"{row['wall']:.1f} | "
                    f"{_r(row['grid'])} | {_r(row['sample'])} |"
                )
    return lines


def speed_table(name: str, res: dict) -> list[str]:
    lines = [
        "| model | seq | batch | fwd ms | method | counted fwd-eq | FLOPs ×fwd | wall ×fwd | speed-up vs exact | "
        "r grid overall |",
        "|" + "---|" * 10,
    ]
    exact = res["rows"]["exact"]
    for label, row in res["rows"].items():
        r = "" if label == "exact" else f"{row['grid']['overall']:.3f}"
        speed = "" if label == "exact" else f"{exact['wall'] / row['wall']:.1f}×"
        flops = "" if label == "exact" else f"{row['flops']:.2f}"
        lines.append(
            f"| {name} | {res['seq']} | {res['batch']} | {res['t_fwd'] * 1e3:.1f} | {label} | "
            f"{row['counted']:.1f} | {flops} | {row['wall']:.2f} | {speed} | {r} |"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, the organisms only")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--n", type=int, default=64, help="organism samples (default 64)")
    p.add_argument("--seed", type=int, default=0, help="sample seed of organism:shapes (default 0)")
    p.add_argument("--direction", default="denoising", choices=("denoising", "noising"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    reps = args.reps or (3 if args.quick else 5)
    results = []
    for organism in ("balanced", "text-biased"):
        m = mech.load(f"organism:{organism}")
        for corruption, (clean, corrupted, ctx) in organism_runs(m, args.n, args.seed).items():
            results.append((organism, corruption, measure(m, clean, corrupted, ctx, reps, args.direction)))
    print(
        f"### Fidelity on the organisms (n = {args.n}, seed {args.seed}, {args.direction}, "
        f"seq {results[0][2]['seq']})\n"
    )
    print("\n".join(fidelity_table(results)))
    if not args.quick:
        m = random_llava(512, 12, 8, 160, 8)  # 400 image tokens
        clean, corrupted = raw_inputs(m, 2, 200, 160, 8)
        print("\n### Speed\n")
        print(
            "\n".join(
                speed_table(
                    "random LLaVA, hidden 512",
                    measure(
                        m,
                        clean,
                        corrupted,
                        None,
                        reps,
                        "denoising",
                        methods=(("atp", 1), ("deeplift", 1), ("ig", 1)),
                    ),
                )
            )
        )
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU. r grid: Pearson r over the "
        "[layer, group] normalized effects of the batch means (18 entries per site, 54 overall); r per-sample: "
        "over the per-sample metric changes ΔM ([layer, group, sample])."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
