"""GPU benchmark of mech's instruments on Qwen2.5-VL-7B and LLaVA-1.5-7B (random bf16 weights, real configs).

One command, one hard time budget, one result file (issue 27). Every figure is a ratio to the plain SDPA
forward of the same inputs in the same run (:mod:`gpu_rows`):

* attention mass (query last, and all text queries) at ~1k, 4k and 16k visual tokens, next to eager
  ``output_attentions`` (an out-of-memory is a row with ``status: "oom"``);
* the exact residual patching sweep: forward-equivalents per patched run and wall time (1k, 4k);
* DeepLIFT attribution patching: time, peak memory, the longest sequence that fits (1k … 16k);
* ``mech.curves.modality_contributions`` with default arguments on samples with images of different sizes;
* correctness in bf16 against fp32 (:mod:`gpu_checks`).

Budget: rows run in priority order; each has a deadline (``--row-cap-s``, and what is left of the model's
share of ``--budget-s``); a row whose estimated cost exceeds what is left is recorded as ``skipped`` with the
reason, one that overruns as ``timeout``, one that fails as ``error``. The result file is rewritten after
every row, so it exists whatever happens: ``<results-dir>/<date>-<device>.json`` and ``.md`` (and a copy
under ``$OUT`` when that is set).

    python benchmarks/gpu.py                # on a CUDA GPU; see benchmarks/README.md for the device command
    python benchmarks/gpu.py --dry-run      # the same code path on the CPU, configs scaled down, < 2 minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import gpu_models as GM  # noqa: E402
import gpu_report  # noqa: E402
import torch  # noqa: E402
from gpu_rows import Ctx, attention_rows, contribution_row, deeplift_row, patching_row  # noqa: E402
from timing import CUDA_MEMORY_METHOD, MEMORY_METHOD, free, is_oom  # noqa: E402

# (GPU, dry run): visual tokens per row family
PLAN = {
    "attention": ((1024, 4096, 16384), (16, 64, 144)),
    "patching": ((1024, 4096), (16, 64)),
    "deeplift": ((1024, 4096, 8192, 16384), (16, 64, 144)),
    "contributions": (((256, 1.0), (576, 1.5), (1024, 0.75)), ((16, 1.0), (36, 1.5), (64, 0.75))),
    "checks": (1024, 64),
}
# cost of a row in plain forwards (reps = 3): modes × (warm-up + reps); 2 + 0.6 × patched runs; ...
COST = {"attention": 18, "deeplift": 12, "contributions": 60}
BASELINE = (
    "model(**inputs, use_cache=False, logits_to_keep=1) under torch.no_grad, SDPA attention, "
    "the same inputs, in the same run"
)


class RowTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise RowTimeout()


class Budget:
    """Wall-clock budget of the run; ``share`` is the current model's deadline (a monotonic time)."""

    def __init__(self, total_s: float, row_cap_s: float):
        self.t0, self.total, self.row_cap = time.monotonic(), total_s, row_cap_s
        self.share = self.t0 + total_s

    def left(self) -> float:
        return min(self.t0 + self.total, self.share) - time.monotonic()

    def total_left(self) -> float:
        return self.t0 + self.total - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def _status_row(model: str, family: str, instrument: str, n, status: str, reason: str) -> dict:
    """A row that was not measured: ``status`` (skipped / timeout / error / oom) and why; no ratios."""
    return {
        "model": model,
        "family": family,
        "instrument": instrument,
        "visual_tokens": n,
        "status": status,
        "reason": reason,
        "time_ratio": None,
        "memory_ratio": None,
    }


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


class Run:
    """The result being built, written after every row."""

    def __init__(self, args, device: str, cuda: bool):
        self.args, self.cuda = args, cuda
        self.budget = Budget(args.budget_s, args.row_cap_s)
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        some = "" if set(args.models) == set(GM.FAMILIES) else "-" + "-".join(args.models)
        self.name = f"{date}-{device}{some}"  # a partial rerun does not overwrite the full run's file
        self.result = {
            "schema": 1,
            "device": device,
            "dry_run": args.dry_run,
            "date": date,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "complete": False,
            "budget_s": args.budget_s,
            "row_cap_s": args.row_cap_s,
            "reps": args.reps,
            "baseline": BASELINE,
            "memory_method": CUDA_MEMORY_METHOD if cuda else MEMORY_METHOD,
            "environment": gpu_report.environment(cuda),
            "models": {},
            "rows": [],
            "checks": [],
            "notes": [],
        }
        if args.dry_run:
            self.result["notes"].append(
                "dry run: scaled-down configs on the CPU in fp32; it checks the code "
                "path, its ratios are not measurements of the GPU targets"
            )

    def write(self) -> None:
        self.result["elapsed_s"] = round(self.budget.elapsed(), 2)
        self.result["cpu_s"] = round(time.process_time(), 2)  # this process's CPU time (load-independent)
        self.result["targets"] = gpu_report.targets(self.result)
        gpu_report.write(self.result, self.name, Path(self.args.results_dir), os.environ.get("OUT"))

    def guarded(
        self, what: str, ids: list[tuple], estimate_s: float, fn, rows_key: str = "rows"
    ) -> list[dict]:
        """Run ``fn()`` (returning rows) under the budget; skipped / timeout / error rows for ``ids``
        (``(model, family, instrument, visual_tokens)``) where it could not run."""
        left = self.budget.left()
        status, reason, rows = None, None, []
        print(
            f"  [{self.budget.elapsed():6.1f}s] {what}: {ids[0][0]} @ {ids[0][3]} visual tokens "
            f"(estimate {estimate_s:.0f} s, {left:.0f} s left)",
            flush=True,
        )
        if estimate_s > left:
            status, reason = "skipped", f"budget: estimated {estimate_s:.0f} s > {max(left, 0):.0f} s left"
        else:
            signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, max(1.0, min(left, self.budget.row_cap)))
            t = time.monotonic()
            try:
                rows = fn()
            except RowTimeout:
                status, reason = "timeout", f"stopped after {time.monotonic() - t:.0f} s (row deadline)"
            except Exception as exc:  # noqa: BLE001 - recorded in the result, the run goes on
                status = "oom" if is_oom(exc) else "error"
                where = traceback.extract_tb(exc.__traceback__)[-1]
                reason = f"{type(exc).__name__}: {str(exc)[:400]} (at {where.filename}:{where.lineno} in {where.name})"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            free(self.cuda)
        if status is not None:
            rows = [_status_row(m, f, i, n, status, reason) for m, f, i, n in ids]
            if rows_key == "checks":
                rows = [
                    {"model": m, "check": i, "status": status, "reason": reason, "passed": False}
                    for m, f, i, n in ids
                ]
        self.result[rows_key].extend(rows)
        for r in rows:
            print(f"  [{self.budget.elapsed():6.1f}s] {gpu_report.line(r)}", flush=True)
        self.write()
        return rows


def _configs(dry: bool) -> dict:
    out = {}
    for family, (_, _, name) in GM.FAMILIES.items():
        real = GM.config(family)
        out[family] = (
            name + (" (dry run: scaled-down config)" if dry else ""),
            GM.scaled(family, real) if dry else real,
            GM.scaled(family, real) if dry else GM.scaled(family, real, text_layers=4, hidden=None),
        )
    return out


def _plan(family: str, cfg, dry: bool, n_layers: int) -> list[tuple]:
    """``(what, instruments, images, cost in plain forwards of the row's length)`` in priority order."""
    pick = 1 if dry else 0
    attention = (
        "plain forward (baseline)",
        "attention_mass(query='last')",
        "attention_mass(query='text')",
        "eager output_attentions",
    )
    im = lambda n: GM.images_for(family, cfg, n)  # noqa: E731
    out = [("attention", attention, im(n), COST["attention"]) for n in PLAN["attention"][pick]]
    patching = [
        ("patching", ("activation_patching(resid_pre sweep)",), im(n), 2 + 0.6 * 3 * n_layers)
        for n in PLAN["patching"][pick]
    ]
    # every image size twice: from raw inputs (no sample dicts and no processor on the device) the Python API's
    # default donors are rows of the same batch with as many image positions (mech.curves.donors.batch_donors)
    sizes = (
        [GM.Images(count=c) for c in (1, 2)]
        if family == "llava"
        else [GM.images_for(family, cfg, t, a) for t, a in PLAN["contributions"][pick]]
    )
    samples = [s for s in sizes for _ in range(2)]
    out += patching[:1]
    out += [
        ("deeplift", ("attribution_patching(method='deeplift')",), im(n), COST["deeplift"])
        for n in PLAN["deeplift"][pick]
    ]
    out += [("contributions", ("modality_contributions(defaults)",), samples, COST["contributions"])]
    return out + patching[1:]


ROWS = {
    "attention": attention_rows,
    "patching": patching_row,
    "deeplift": deeplift_row,
    "contributions": contribution_row,
}


def run_model(run: Run, family: str, label: str, cfg, device: str, dtype) -> None:
    """Build one model and run its plan under its share of the budget."""
    args = run.args
    models_left = len(args.models) - list(args.models).index(family)
    run.budget.share = time.monotonic() + run.budget.total_left() / max(1, models_left)
    info = run.result["models"].setdefault(label, {"family": family, "config": GM.FAMILIES[family][0]})
    info["params"] = GM.n_params(family, cfg)
    plan = _plan(family, cfg, args.dry_run, cfg.get_text_config().num_hidden_layers)
    box = {}

    def build():
        box["m"], info["build_seconds"] = GM.build(family, cfg, device, dtype)
        info["dtype"] = str(dtype).replace("torch.", "")
        return []

    built = run.guarded("build", [(label, family, "build", None)], 0, build)
    if "m" not in box:
        reason = f"model not built ({built[0]['status']}: {built[0]['reason']})"
        for _what, instruments, images, _ in plan:
            n = (
                max(i.tokens(family, cfg) for i in images)
                if isinstance(images, list)
                else images.tokens(family, cfg)
            )
            run.result["rows"] += [_status_row(label, family, i, n, "skipped", reason) for i in instruments]
        run.write()
        return
    ctx = Ctx(box.pop("m"), family, label, cfg, run.cuda, args.reps, {})

    def est(n: int, units: float) -> float:  # seconds, from the longest plain forward measured so far
        if not ctx.plain:
            return 0.0
        n0 = max(ctx.plain)
        return units * (ctx.plain[n0].seconds or 0.0) * max(1.0, n / n0) ** 1.2

    oom_at = None
    for what, instruments, images, cost in plan:
        n = (
            sum(i.tokens(family, cfg) for i in images)
            if isinstance(images, list)
            else images.tokens(family, cfg)
        )
        shown = max(i.tokens(family, cfg) for i in images) if isinstance(images, list) else n
        ids = [(label, family, i, shown) for i in instruments]
        if (
            what == "deeplift" and oom_at is not None
        ):  # a longer sequence cannot fit where a shorter one did not
            run.result["rows"].append(
                _status_row(
                    label,
                    family,
                    instruments[0],
                    n,
                    "skipped",
                    f"out of memory already at {oom_at} visual tokens",
                )
            )
            continue
        rows = run.guarded(what, ids, est(n, cost), lambda w=what, im=images: ROWS[w](ctx, im))
        if what == "deeplift" and rows and rows[0].get("status") == "oom":
            oom_at = rows[0]["visual_tokens"]
    fits = [
        r["visual_tokens"]
        for r in run.result["rows"]
        if r.get("model") == label
        and r["instrument"].startswith("attribution_patching")
        and r.get("status") == "ok"
    ]
    info["deeplift_longest_fit_visual_tokens"] = max(fits) if fits else None
    info["deeplift_first_oom_visual_tokens"] = oom_at
    ctx = box = None  # free the model before the next family builds
    free(run.cuda)
    run.write()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dry-run", action="store_true", help="scaled-down configs on the CPU (checks the code path)"
    )
    p.add_argument(
        "--budget-s", type=float, default=None, help="whole-run budget (default 450 on GPU, 100 dry)"
    )
    p.add_argument(
        "--row-cap-s", type=float, default=None, help="longest one row may take (default 120 / 60)"
    )
    p.add_argument("--reps", type=int, default=None, help="timed repeats per measurement (default 3 / 1)")
    p.add_argument("--models", nargs="+", default=list(GM.FAMILIES), choices=list(GM.FAMILIES))
    p.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default=None,
        help="the models' dtype (default bfloat16 on GPU, float32 in the dry run)",
    )
    p.add_argument("--no-checks", action="store_true", help="skip the bf16-vs-fp32 correctness checks")
    p.add_argument(
        "--results-dir",
        default=None,
        help="where the JSON and Markdown go (default benchmarks/results; dry run: runs/gpu-dry-run)",
    )
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not args.dry_run and not cuda:
        print("no CUDA GPU here: run with --dry-run for the CPU code-path check", file=sys.stderr)
        return 2
    args.budget_s = args.budget_s or (100.0 if args.dry_run else 450.0)
    args.row_cap_s = args.row_cap_s or (60.0 if args.dry_run else 120.0)
    args.reps = args.reps or (1 if args.dry_run else 3)
    args.results_dir = args.results_dir or str(
        HERE.parent / "runs" / "gpu-dry-run" if args.dry_run else HERE / "results"
    )
    if args.dry_run:
        torch.set_num_threads(1)
    device_name = _slug(torch.cuda.get_device_name()) if cuda else "cpu-dry-run"
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    dtype = getattr(torch, args.dtype) if args.dtype else dtype
    run = Run(args, device_name, cuda)
    print(
        f"{run.name}: budget {args.budget_s:.0f} s, row cap {args.row_cap_s:.0f} s, reps {args.reps}",
        flush=True,
    )
    configs = _configs(args.dry_run)
    if not args.no_checks:
        import gpu_checks

        for family in args.models:
            label, _, small = configs[family]
            run.guarded(
                "checks",
                [(label, family, "correctness", None)],
                0,
                lambda f=family, lb=label, s=small: gpu_checks.checks(
                    f, s, device, PLAN["checks"][1 if args.dry_run else 0], lb
                ),
                rows_key="checks",
            )
    for family in args.models:
        label, cfg, _ = configs[family]
        print(f"{label}:", flush=True)
        run_model(run, family, label, cfg, device, dtype)
    run.result["complete"] = True
    run.write()
    print(gpu_report.markdown(run.result))
    print(f"wrote {Path(args.results_dir) / run.name}.json ({run.budget.elapsed():.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
