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

GPU rows (Qwen2.5-VL-7B and LLaVA-1.5-7B, random bf16 weights): ``benchmarks/gpu.py``.

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

# ---------------------------------------------------------------- memory (benchmarks/timing.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import MEMORY_METHOD, peak_mib, reset_peak, status_kib  # noqa: E402

REPEATS = 3  # set by --repeats


def measure(fn, repeats: int | None = None) -> dict:
    """Run ``fn()`` ``repeats`` times (default :data:`REPEATS`): median wall seconds, the largest peak memory
    (MiB) during a run, and the resident memory when the first run started (``start_mib``)."""
    runs, peaks, start = [], [], None
    for _ in range(repeats or REPEATS):
        gc.collect()
        reset_peak()
        now = (status_kib("VmRSS") or 0) / 1024
        start = now if start is None else start
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
        peaks.append(peak_mib())
    return {"seconds": statistics.median(runs), "peak_mib": max(peaks), "start_mib": start, "repeats": runs}


# ---------------------------------------------------------------- instruments on prepared batches
def plain_forward(m, batches):
    with torch.no_grad():
        for b in batches:
            m.model(**b["clean"], use_cache=False)


def instruments(m, batches) -> dict:
    """name -> zero-argument callable running the instrument over every batch."""
    from mech.curves import modality_contributions
    from mech.measure.attention import attention_mass
    from mech.measure.knockout import attention_knockout
    from mech.measure.patching import activation_patching
    from mech.measure.patching.attribution import attribution_patching

    def each(f):
        return lambda: [f(b) for b in batches]

    return {
        "attention_mass (query last)": each(lambda b: attention_mass(m, b["clean"], query="last")),
        "activation_patching (resid_post × image,text,last; white_image denoising)": each(
            lambda b: activation_patching(
                m,
                b["clean"],
                b["corrupted"],
                sites="resid_post",
                positions=POSITIONS,
                direction="denoising",
                condition=b.get("condition"),
            )
        ),
        "attention_knockout (image→last, text→last; window 2)": each(
            lambda b: attention_knockout(m, b["clean"], edges=KNOCKOUT_EDGES, window=2)
        ),
        "attribution_patching (resid_pre, attn_out, mlp_out × image,text,last)": each(
            lambda b: attribution_patching(
                m,
                b["clean"],
                b["corrupted"],
                positions=POSITIONS,
                direction="denoising",
                condition=b.get("condition"),
            )
        ),
        "modality_contributions (attention, patching, dla)": each(
            lambda b: modality_contributions(
                m, b["clean"], b["answer"], b["counterfactual"], estimators=("attention", "patching", "dla")
            )
        ),
    }


def _row(name: str, res: dict, n: int, plain_s: float | None) -> dict:
    return {
        "instrument": name,
        "seconds": res["seconds"],
        "samples_per_s": n / res["seconds"],
        "x_plain_forward": None if plain_s is None else res["seconds"] / plain_s,
        "peak_mib": res["peak_mib"],
        "start_mib": res.get("start_mib"),
        "repeats_s": res.get("repeats"),
        **({"error": res["error"]} if "error" in res else {}),
    }


def _time_plain(m, batches) -> dict:
    plain_forward(m, batches)  # warm-up
    return measure(lambda: plain_forward(m, batches))


# ---------------------------------------------------------------- organisms (CPU)
def bench_organism(spec: str, n: int, bs: int, report_n: int | None) -> list[dict]:
    from mech.conditions import condition_inputs
    from mech.measure.evaluation.run import evaluate
    from mech.prepare.data import Dataset, load_data
    from mech.prepare.targets import decision_tokens

    m = mech.load(spec)
    data = load_data("organism:shapes", n=n, seed=0)
    samples = data.samples
    chunks = [samples[i : i + bs] for i in range(0, len(samples), bs)]
    batches = []

    def prepare():
        for c in chunks:
            batches.append(
                {
                    "samples": c,
                    "clean": condition_inputs(m, c, "complete"),
                    "corrupted": condition_inputs(m, c, "white_image"),
                    "condition": "white_image",
                }
            )

    prep = measure(prepare, repeats=1)
    with torch.no_grad():
        for b in batches:  # the contribution target: the model's own decision (outside the timing)
            last = m.logits(b["clean"])[torch.arange(len(b["samples"])), b["clean"].groups.last()].float()
            b["answer"], b["counterfactual"] = decision_tokens(m, b["samples"], last)
    plain = _time_plain(m, batches)
    rows = [
        _row("plain forward", plain, n, plain["seconds"]),
        _row("prepare inputs (processor: complete + white_image)", prep, n, plain["seconds"]),
    ]
    for name, fn in instruments(m, batches).items():
        rows.append(_row(name, measure(fn), n, plain["seconds"]))
        print(f"  {spec}: {name}: {rows[-1]['seconds']:.2f}s", flush=True)
    ds = Dataset(data.name, list(samples), default_style=data.default_style, scoring=data.scoring)
    res = measure(lambda: evaluate(m, ds, conditions=EVAL_CONDITIONS, batch_size=bs, progress=False))
    rows.append(_row(f"evaluate ({', '.join(EVAL_CONDITIONS)})", res, n, plain["seconds"]))
    print(f"  {spec}: evaluate: {res['seconds']:.2f}s", flush=True)
    if report_n:
        rows.append(
            _row(
                f"mech report (--n {report_n}, whole CLI)",
                bench_report(spec, report_n, bs),
                report_n,
                plain["seconds"] * report_n / n,
            )
        )
        print(f"  {spec}: report: {rows[-1]['seconds']:.2f}s", flush=True)
    m = batches = None  # free the model before the next one loads
    gc.collect()
    return rows


def bench_report(spec: str, n: int, bs: int) -> dict:
    from mech.cli import main as cli

    rc, log = [], io.StringIO()

    def once():  # a fresh directory per repeat: the report resumes finished steps
        with tempfile.TemporaryDirectory(prefix="bench_report_") as out:
            rc.append(
                cli(
                    [
                        "report",
                        "--model",
                        spec,
                        "--data",
                        "organism:shapes",
                        "--n",
                        str(n),
                        "--out",
                        out,
                        "--batch-size",
                        str(bs),
                    ]
                )
            )

    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        res = measure(once)
    if set(rc) != {0}:
        res["error"] = f"mech report exited with {rc}"
        print(log.getvalue()[-2000:], file=sys.stderr)
    return res


# ---------------------------------------------------------------- output
def table(rows: list[dict], memory: str) -> str:
    lines = [
        f"| instrument | samples/s | × plain forward time | peak memory, MiB ({memory}; + over the start) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        x = "–" if r["x_plain_forward"] is None else f"{r['x_plain_forward']:.1f}×"
        err = f" (error: {r['error']})" if "error" in r else ""
        who = f"{r['model']}: " if "model" in r else ""
        up = "" if r.get("start_mib") is None else f" (+{max(0.0, r['peak_mib'] - r['start_mib']):.0f})"
        lines.append(
            f"| {who}{r['instrument']}{err} | {r['samples_per_s']:.1f} | {x} | {r['peak_mib']:.0f}{up} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=128, help="samples per instrument and the report's --n")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="n=8, batch 4, report --n 8, balanced organism only")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--no-report", action="store_true", help="skip the whole-report rows")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the median time is reported")
    p.add_argument("--out", default="runs/bench_instruments.json")
    args = p.parse_args(argv)
    global REPEATS
    if args.quick:
        args.n, args.batch_size, args.models, args.repeats = 8, 4, args.models[:1], 1
    REPEATS = max(1, args.repeats)
    t0 = time.perf_counter()
    settings = {
        "n": args.n,
        "batch_size": args.batch_size,
        "data": "organism:shapes (test split, seed 0)",
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "memory_method": MEMORY_METHOD,
        "eval_conditions": list(EVAL_CONDITIONS),
        "device": "cpu",
        "repeats": REPEATS,
        "time": "median over repeats (plain forward: after one warm-up pass)",
    }
    print(
        f"n={args.n}, batch {args.batch_size}, torch threads {torch.get_num_threads()}; memory: {MEMORY_METHOD}"
    )
    result = {"settings": settings, "models": {}}
    mem = "VmHWM" if MEMORY_METHOD.startswith("VmHWM") else "ru_maxrss"
    for spec in args.models:
        rows = bench_organism(spec, args.n, args.batch_size, None if args.no_report else args.n)
        result["models"][spec] = rows
        print(f"\n### {spec} (CPU, n={args.n}, batch {args.batch_size})\n\n{table(rows, mem)}\n", flush=True)
    # ru_maxrss does not see peaks that a clear_refs reset erased: take the larger of it and the rows' peaks
    peaks = [r["peak_mib"] for rows in result["models"].values() for r in rows]
    result["process_ru_maxrss_mib"] = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, *peaks])
    result["total_seconds"] = time.perf_counter() - t0
    write_json(args.out, result)
    print(
        f"total {result['total_seconds']:.0f}s; process peak RSS (ru_maxrss) "
        f"{result['process_ru_maxrss_mib']:.0f} MiB; wrote {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
