"""Benchmark: attribution patching (AtP) vs the exact activation-patching sweep it estimates.

Not a test. Run ``python benchmarks/bench_attribution.py [--quick]``; prints one Markdown table whose
numbers were all measured in this run.

For each model: clean = images of random pixels, corrupted = the same prompts with white images
(``white_image``); sites ``resid_pre, attn_out, mlp_out`` at every layer; position groups
``image, text, last``; logit difference, denoising. Columns:

* ``fwd ms`` — one plain forward of the batch (median of repeats);
* ``AtP ×fwd`` / ``exact ×fwd`` — measured wall time divided by one plain forward (median of repeats);
* ``AtP counted`` — 2 forwards + 1 backward w.r.t. activations only (≈ 1 forward in FLOPs) = 3;
* ``exact counted`` — full forwards of both runs (2) + decoder-layer evaluations of every patched run
  / ``n_layers`` (the engine reuses the unchanged prefix and stacks runs along the batch axis);
* ``speed-up`` — exact wall / AtP wall; ``r`` — Pearson r between the two (overall and per site).

Models: ``organism:balanced`` when trained, else a random LLaVA of the organism's size (6 Llama
layers, hidden 128); a wider random LLaVA (12 layers, hidden 512, 8 heads) at ~600 tokens.
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
from mech.attribution import attribution_patching, compare_to_exact  # noqa: E402
from mech.patching import activation_patching  # noqa: E402

SITES = ("resid_pre", "attn_out", "mlp_out")
POSITIONS = ("image", "text", "last")
IMAGE_TOKEN = 4


def random_llava(hidden: int, layers: int, heads: int, image: int, patch: int):
    import transformers as T

    cfg = T.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=1, num_attention_heads=2, image_size=image, patch_size=patch),
        text_config=dict(model_type="llama", hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         vocab_size=256, max_position_embeddings=4096),
        image_token_index=IMAGE_TOKEN)
    torch.manual_seed(0)
    return mech.load((T.LlavaForConditionalGeneration(cfg).eval(), None))


def raw_inputs(m, batch: int, n_text: int, image: int, patch: int, seed: int = 0):
    """(clean, corrupted) raw inputs: ``[bos, image × (image/patch)², text × n_text]``."""
    g = torch.Generator().manual_seed(seed)
    n_img = (image // patch) ** 2
    text = torch.randint(5, 256, (batch, n_text), generator=g)
    ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.full((batch, n_img), IMAGE_TOKEN), text], 1)
    pix = torch.randn(batch, 3, image, image, generator=g)
    base = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    return m.inputs({**base, "pixel_values": pix}), m.inputs({**base, "pixel_values": torch.full_like(pix, 2.0)})


def organism_inputs(m, batch: int):
    from PIL import Image

    from mech.organisms import shapes

    samples = shapes.generate(batch, split="test", seed=0)
    imgs = [s["image"] for s in samples]
    qs = [s["question"] for s in samples]
    white = [Image.new("RGB", im.size, (255, 255, 255)) for im in imgs]
    return m.inputs(m.prepare(imgs, qs)), m.inputs(m.prepare(white, qs))


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name, m, clean, corrupted, reps: int) -> str:
    with torch.no_grad():
        t_fwd = _median_time(lambda: m.model(**clean), reps)
    out = {}
    t_atp = _median_time(lambda: out.__setitem__("atp", attribution_patching(m, clean, corrupted, sites=SITES,
                                                                            positions=POSITIONS)), reps)
    t_exact = _median_time(lambda: out.__setitem__("exact", activation_patching(m, clean, corrupted, site=SITES,
                                                                               positions=POSITIONS)), max(1, reps // 2))
    atp, exact = out["atp"], out["exact"]
    exact_fe = 2 + exact.forward_equivalents * exact.n_patched_runs
    r = compare_to_exact(atp, exact)
    seq = clean["input_ids"].shape[1]
    return (f"| {name} | {m.arch.n_layers} | {seq} | {clean['input_ids'].shape[0]} | {t_fwd * 1e3:.1f} | "
            f"{atp.forward_equivalents:.0f} | {t_atp / t_fwd:.2f} | {exact_fe:.1f} | {t_exact / t_fwd:.2f} | "
            f"{t_exact / t_atp:.1f}× | {r['overall']:.3f} | " + " / ".join(f"{r[s]:.3f}" for s in SITES) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, the small model only")
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    reps = args.reps or (3 if args.quick else 7)
    lines = ["| model | layers | seq | batch | fwd ms | AtP counted | AtP ×fwd | exact counted | exact ×fwd | "
             "speed-up | r overall | r " + " / ".join(SITES) + " |", "|" + "---|" * 12]
    try:
        m = mech.load("organism:balanced")
        clean, corrupted = organism_inputs(m, 8)
        name = "organism:balanced, white_image"
    except Exception:  # organism not trained yet
        m = random_llava(128, 6, 4, 32, 8)
        clean, corrupted = raw_inputs(m, 8, 24, 32, 8)
        name = "random organism-size LLaVA"
    lines.append(bench(name, m, clean, corrupted, reps))
    if not args.quick:
        m = random_llava(512, 12, 8, 160, 8)  # 400 image tokens
        clean, corrupted = raw_inputs(m, 2, 200, 160, 8)
        lines.append(bench("random LLaVA, hidden 512", m, clean, corrupted, reps))
    print("\n".join(lines))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; "
          "r = Pearson r between AtP and exact normalized effects ([layer, group] entries).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
