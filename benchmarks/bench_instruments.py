"""Benchmark: throughput of every mech instrument, as a multiple of a plain forward (issue 8, item 3).

Not a test. One run measures, per model organism (``organism:balanced``, ``organism:text-biased``), on
the same ``--n`` samples of ``organism:shapes`` in batches of ``--batch-size``:

==========================  ===================================================================================
plain forward               ``model(**inputs, use_cache=False)`` under ``no_grad``: the unit of the ratios
prepare inputs              the processor: ``condition_inputs`` complete + white_image (done once, outside the
                            timing of every tensor-level instrument below)
attention_mass              ``query="last"``
activation_patching         ``resid_post`` × {image, text, last}, ``white_image`` corruption, denoising,
                            logit difference (answer = clean top token, counterfactual = corrupted top token)
attention_knockout          edges image→last and text→last, window 2, every window start
attribution_patching        AtP, default sites (resid_pre, attn_out, mlp_out) × {image, text, last}, as above
modality_contributions      estimators attention + patching + dla, the model's own decision
                            (:func:`mech.prepare.targets.decision_tokens`, computed outside the timing)
evaluate                    option scoring under complete, white_image, image_only, no_image (with its own prep)
mech report                 ``mech.cli.main(["report", --n N, --batch-size B])`` for the model: eval (all 6
                            default conditions) → attention → patch → contrib, every file and figure, 4 model
                            loads; into a fresh temporary directory
==========================  ===================================================================================

``samples/s`` = n / wall seconds; ``× plain forward time`` = wall seconds / wall seconds of the plain
forward of the same n samples at the same batch size. Times are medians of ``--repeats`` runs (default 3;
the plain forward after one warm-up pass; input preparation runs once).

Memory: peak resident set size (RSS) of the process while the instrument runs, read from
``/proc/self/status`` ``VmHWM`` after resetting the high-water mark (``echo 5 > /proc/self/clear_refs``,
Linux ≥ 4.0) before each run, so each row has its own peak (it includes the model weights and everything
already resident, e.g. memory the allocator kept from earlier rows); the table also gives the rise over
the RSS when the row started. Where that reset is unavailable, the column falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (process-lifetime peak, monotone over rows); the JSON names
the method used. tracemalloc is not used: it does not see torch's tensor allocations.

GPU rows (only when ``torch.cuda.is_available()``; UNTESTED — no GPU where this was written): a 7B-size
Qwen2.5-VL (hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944; 32-layer window ViT) and a
LLaVA-1.5-7B (CLIP-L/336 + Llama-7B) built from their config classes with random bf16 weights, on
synthetic tokenized inputs with 1024 (Qwen: one 896×896 image) / 1152 (LLaVA: two 336² images) image
tokens; batch ``--gpu-batch-size``, ``--gpu-n`` samples; peak memory = ``torch.cuda.max_memory_allocated``.
evaluate and the report need a real processor and are not run there. ``--gpu-dry-run`` runs that code on
CPU with the same config classes and inputs shrunk to toy width/depth (it checks the code path, not speed).

    OMP_NUM_THREADS=1 python benchmarks/bench_instruments.py [--n 128] [--batch-size 32] [--quick] [--out F]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import mech  # noqa: E402
from mech.results import write_json  # noqa: E402

MODELS = ("organism:balanced", "organism:text-biased")
EVAL_CONDITIONS = ("complete", "white_image", "image_only", "no_image")
POSITIONS = ("image", "text", "last")
KNOCKOUT_EDGES = (("image", "last"), ("text", "last"))

# ---------------------------------------------------------------- memory
def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        return bool(open("/proc/self/clear_refs", "wb", buffering=0).write(b"5"))
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith(field + ":")), None)
    except OSError:
        return None


MEMORY_METHOD = ("VmHWM of /proc/self/status, reset per row via /proc/self/clear_refs" if _reset_peak()
                 and _status_kib("VmHWM") is not None else "resource.getrusage(RUSAGE_SELF).ru_maxrss (process peak)")


def _peak_mib() -> float:
    kib = _status_kib("VmHWM") if MEMORY_METHOD.startswith("VmHWM") else None
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


REPEATS = 3  # set by --repeats


def measure(fn, gpu: bool = False, repeats: int | None = None) -> dict:
    """Run ``fn()`` ``repeats`` times (default :data:`REPEATS`): median wall seconds, the largest peak memory
    (MiB) during a run, and the resident memory when the first run started (``start_mib``)."""
    runs, peaks, start = [], [], None
    for _ in range(repeats or REPEATS):
        gc.collect()
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            now = torch.cuda.memory_allocated() / 2**20
        else:
            _reset_peak()
            now = (_status_kib("VmRSS") or 0) / 1024
        start = now if start is None else start
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize() if gpu else None
        runs.append(time.perf_counter() - t)
        peaks.append(torch.cuda.max_memory_allocated() / 2**20 if gpu else _peak_mib())
    return {"seconds": statistics.median(runs), "peak_mib": max(peaks), "start_mib": start, "repeats": runs}


# ---------------------------------------------------------------- instruments on prepared batches
def plain_forward(m, batches):
    with torch.no_grad():
        for b in batches:
            m.model(**b["clean"], use_cache=False)


def instruments(m, batches) -> dict:
    """name -> zero-argument callable running the instrument over every batch."""
    from mech.measure.attention import attention_mass
    from mech.measure.patching.attribution import attribution_patching
    from mech.curves import modality_contributions
    from mech.measure.knockout import attention_knockout
    from mech.measure.patching import activation_patching

    def each(f):
        return lambda: [f(b) for b in batches]
    return {
        "attention_mass (query last)": each(lambda b: attention_mass(m, b["clean"], query="last")),
        "activation_patching (resid_post × image,text,last; white_image denoising)": each(
            lambda b: activation_patching(m, b["clean"], b["corrupted"], site="resid_post", positions=POSITIONS,
                                          direction="denoising", condition=b.get("condition"))),
        "attention_knockout (image→last, text→last; window 2)": each(
            lambda b: attention_knockout(m, b["clean"], edges=KNOCKOUT_EDGES, window=2)),
        "attribution_patching (resid_pre, attn_out, mlp_out × image,text,last)": each(
            lambda b: attribution_patching(m, b["clean"], b["corrupted"], positions=POSITIONS,
                                           direction="denoising", condition=b.get("condition"))),
        "modality_contributions (attention, patching, dla)": each(
            lambda b: modality_contributions(m, b["clean"], b["answer"], b["counterfactual"],
                                             estimators=("attention", "patching", "dla"))),
    }


def _row(name: str, res: dict, n: int, plain_s: float | None) -> dict:
    return {"instrument": name, "seconds": res["seconds"], "samples_per_s": n / res["seconds"],
            "x_plain_forward": None if plain_s is None else res["seconds"] / plain_s, "peak_mib": res["peak_mib"],
            "start_mib": res.get("start_mib"), "repeats_s": res.get("repeats"),
            **({"error": res["error"]} if "error" in res else {})}


def _time_plain(m, batches, gpu: bool = False) -> dict:
    plain_forward(m, batches)  # warm-up
    return measure(lambda: plain_forward(m, batches), gpu)


# ---------------------------------------------------------------- organisms (CPU)
def bench_organism(spec: str, n: int, bs: int, report_n: int | None) -> list[dict]:
    from mech.conditions import condition_inputs
    from mech.prepare.data import Dataset, load_data
    from mech.measure.evaluation.run import evaluate
    from mech.prepare.targets import decision_tokens

    m = mech.load(spec)
    data = load_data("organism:shapes", n=n, seed=0)
    samples = data.samples
    chunks = [samples[i:i + bs] for i in range(0, len(samples), bs)]
    batches = []

    def prepare():
        for c in chunks:
            batches.append({"samples": c, "clean": condition_inputs(m, c, "complete"),
                            "corrupted": condition_inputs(m, c, "white_image"), "condition": "white_image"})

    prep = measure(prepare, repeats=1)
    with torch.no_grad():
        for b in batches:  # the contribution target: the model's own decision (outside the timing)
            last = m.logits(b["clean"])[torch.arange(len(b["samples"])), b["clean"].groups.last()].float()
            b["answer"], b["counterfactual"] = decision_tokens(m, b["samples"], last)
    plain = _time_plain(m, batches)
    rows = [_row("plain forward", plain, n, plain["seconds"]),
            _row("prepare inputs (processor: complete + white_image)", prep, n, plain["seconds"])]
    for name, fn in instruments(m, batches).items():
        rows.append(_row(name, measure(fn), n, plain["seconds"]))
        print(f"  {spec}: {name}: {rows[-1]['seconds']:.2f}s", flush=True)
    ds = Dataset(data.name, list(samples), default_style=data.default_style, scoring=data.scoring)
    res = measure(lambda: evaluate(m, ds, conditions=EVAL_CONDITIONS, batch_size=bs, progress=False))
    rows.append(_row(f"evaluate ({', '.join(EVAL_CONDITIONS)})", res, n, plain["seconds"]))
    print(f"  {spec}: evaluate: {res['seconds']:.2f}s", flush=True)
    if report_n:
        rows.append(_row(f"mech report (--n {report_n}, whole CLI)", bench_report(spec, report_n, bs), report_n,
                         plain["seconds"] * report_n / n))
        print(f"  {spec}: report: {rows[-1]['seconds']:.2f}s", flush=True)
    del m, batches
    gc.collect()
    return rows


def bench_report(spec: str, n: int, bs: int) -> dict:
    from mech.cli import main as cli

    rc, log = [], io.StringIO()

    def once():  # a fresh directory per repeat: the report resumes finished steps
        with tempfile.TemporaryDirectory(prefix="bench_report_") as out:
            rc.append(cli(["report", "--model", spec, "--data", "organism:shapes", "--n", str(n), "--out", out,
                           "--batch-size", str(bs)]))

    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        res = measure(once)
    if set(rc) != {0}:
        res["error"] = f"mech report exited with {rc}"
        print(log.getvalue()[-2000:], file=sys.stderr)
    return res


# ---------------------------------------------------------------- 7B-size random models (GPU, untested)
def qwen25vl_7b():
    import transformers as T

    cfg = T.Qwen2_5_VLConfig(
        text_config=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                         intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, rope_theta=1e6),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]))
    return T.Qwen2_5_VLForConditionalGeneration, cfg


def llava15_7b():
    import transformers as T

    cfg = T.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768),
        text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                         max_position_embeddings=4096),
        image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default")
    return T.LlavaForConditionalGeneration, cfg


def synthetic(family: str, cfg, batch: int, n_text: int = 32, seed: int = 0) -> tuple[dict, dict]:
    """(clean, corrupted) tokenized inputs: random pixels vs constant (white-like) pixels."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(100, 30000, (batch, n_text), generator=g)
    if family == "qwen2_5_vl":
        grid = torch.tensor([[1, 64, 64]] * batch)  # 4096 patches of 14² -> 1024 tokens after the 2×2 merge
        n_img = 1024
        img = torch.full((batch, n_img), cfg.image_token_id)
        ids = torch.cat([torch.full((batch, 1), cfg.vision_start_token_id), img,
                         torch.full((batch, 1), cfg.vision_end_token_id), text], 1)
        pix = torch.randn(batch * 4096, 3 * 2 * 14 * 14, generator=g)
        extra = {"image_grid_thw": grid, "mm_token_type_ids": (ids == cfg.image_token_id).int()}
    else:
        n_img = 2 * 576  # two 336² images of 24×24 patches
        ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.full((batch, n_img), cfg.image_token_index),
                         text], 1)
        pix = torch.randn(batch * 2, 3, 336, 336, generator=g)
        extra = {}
    base = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra}
    return {**base, "pixel_values": pix}, {**base, "pixel_values": torch.full_like(pix, 2.0)}


def _shrink(family: str, cfg) -> None:
    """``--gpu-dry-run``: the same config classes and inputs at toy width/depth, to exercise the code on CPU."""
    t, v = cfg.text_config, cfg.vision_config
    t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size = 64, 2, 4, 128
    t.num_key_value_heads = 2 if family == "qwen2_5_vl" else 4
    t.head_dim = 16
    if family == "qwen2_5_vl":
        t.rope_parameters["mrope_section"] = [2, 3, 3]
        t.layer_types = t.layer_types[:2]
        v.depth, v.hidden_size, v.num_heads, v.intermediate_size, v.out_hidden_size = 2, 64, 2, 128, 64
        v.fullatt_block_indexes = [1]
    else:
        v.num_hidden_layers, v.hidden_size, v.num_attention_heads, v.intermediate_size = 2, 64, 2, 128


def bench_gpu(n: int, bs: int, dry: bool = False) -> list[dict]:
    rows = []
    gpu, device, dtype = not dry, ("cpu" if dry else "cuda"), (torch.float32 if dry else torch.bfloat16)
    for family, build in (("qwen2_5_vl", qwen25vl_7b), ("llava", llava15_7b)):
        cls, cfg = build()
        if dry:
            _shrink(family, cfg)
        torch.manual_seed(0)
        with torch.device(device):
            model = cls._from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
        m = mech.load((model, None))
        batches = []
        for k in range(max(1, n // bs)):
            clean, corrupted = synthetic(family, cfg, bs, seed=k)
            b = {"clean": m.inputs(clean), "corrupted": m.inputs(corrupted), "condition": None}
            with torch.no_grad():
                top2 = m.logits(b["clean"])[torch.arange(bs), b["clean"].groups.last()].float().topk(2).indices.cpu()
            b["answer"], b["counterfactual"] = top2[:, 0], top2[:, 1]
            batches.append(b)
        total = bs * len(batches)
        plain = _time_plain(m, batches, gpu=gpu)
        label = f"{family} toy-size dry run (CPU)" if dry else f"{family} 7B-size (random bf16, GPU)"
        rows.append({"model": label} | _row("plain forward", plain, total,
                                                                                plain["seconds"]))
        for name, fn in instruments(m, batches).items():
            try:
                res = measure(fn, gpu=gpu)
            except Exception as exc:  # noqa: BLE001 - an untested path: record and go on
                res = {"seconds": float("nan"), "peak_mib": float("nan"), "error": f"{type(exc).__name__}: {exc}"}
            rows.append({"model": label} | _row(name, res, total, plain["seconds"]))
        print(f"  {family}: done", flush=True)
        del m, model, batches
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- output
def table(rows: list[dict], memory: str) -> str:
    lines = [f"| instrument | samples/s | × plain forward time | peak memory, MiB ({memory}; + over the start) |",
             "|---|---|---|---|"]
    for r in rows:
        x = "–" if r["x_plain_forward"] is None else f"{r['x_plain_forward']:.1f}×"
        err = f" (error: {r['error']})" if "error" in r else ""
        who = f"{r['model']}: " if "model" in r else ""
        up = "" if r.get("start_mib") is None else f" (+{max(0.0, r['peak_mib'] - r['start_mib']):.0f})"
        lines.append(f"| {who}{r['instrument']}{err} | {r['samples_per_s']:.1f} | {x} | {r['peak_mib']:.0f}{up} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=128, help="samples per instrument and the report's --n")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="n=8, batch 4, report --n 8, balanced organism only")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--no-report", action="store_true", help="skip the whole-report rows")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the median time is reported")
    p.add_argument("--gpu-n", type=int, default=16)
    p.add_argument("--gpu-batch-size", type=int, default=4)
    p.add_argument("--gpu-dry-run", action="store_true",
                   help="run the GPU rows' code on CPU with toy-size configs (checks the code path only)")
    p.add_argument("--out", default="runs/bench_instruments.json")
    args = p.parse_args(argv)
    global REPEATS
    if args.quick:
        args.n, args.batch_size, args.models, args.repeats = 8, 4, args.models[:1], 1
    REPEATS = max(1, args.repeats)
    t0 = time.perf_counter()
    settings = {"n": args.n, "batch_size": args.batch_size, "data": "organism:shapes (test split, seed 0)",
                "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "torch": torch.__version__, "memory_method": MEMORY_METHOD,
                "eval_conditions": list(EVAL_CONDITIONS), "device": "cpu",
                "repeats": REPEATS, "time": "median over repeats (plain forward: after one warm-up pass)"}
    print(f"n={args.n}, batch {args.batch_size}, torch threads {torch.get_num_threads()}; memory: {MEMORY_METHOD}")
    result = {"settings": settings, "models": {}}
    mem = "VmHWM" if MEMORY_METHOD.startswith("VmHWM") else "ru_maxrss"
    for spec in args.models:
        rows = bench_organism(spec, args.n, args.batch_size, None if args.no_report else args.n)
        result["models"][spec] = rows
        print(f"\n### {spec} (CPU, n={args.n}, batch {args.batch_size})\n\n{table(rows, mem)}\n", flush=True)
    cuda = torch.cuda.is_available()
    if cuda or args.gpu_dry_run:
        gpu_rows = bench_gpu(args.gpu_n, args.gpu_batch_size, dry=not cuda)
        result["gpu"] = {"n": args.gpu_n, "batch_size": args.gpu_batch_size, "rows": gpu_rows,
                         "memory_method": "torch.cuda.max_memory_allocated" if cuda else MEMORY_METHOD,
                         "device": torch.cuda.get_device_name() if cuda else "cpu dry run (toy sizes)"}
        what = "7B-size random models (GPU" if cuda else "GPU code path, toy sizes (CPU dry run"
        print(f"\n### {what}, n={args.gpu_n}, batch {args.gpu_batch_size})\n\n"
              f"{table(gpu_rows, 'cuda max allocated' if cuda else 'VmHWM')}\n")
    # ru_maxrss does not see peaks that a clear_refs reset erased: take the larger of it and the rows' peaks
    peaks = [r["peak_mib"] for rows in result["models"].values() for r in rows]
    result["process_ru_maxrss_mib"] = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, *peaks])
    result["total_seconds"] = time.perf_counter() - t0
    write_json(args.out, result)
    print(f"total {result['total_seconds']:.0f}s; process peak RSS (ru_maxrss) "
          f"{result['process_ru_maxrss_mib']:.0f} MiB; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
