"""The GPU benchmark's result file: environment, targets, JSON + Markdown writing (``benchmarks/gpu.py``)."""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import os
import platform
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"attention_time_ratio": 1.15, "attention_memory_ratio": 1.1, "patching_forward_equivalents": 0.6}
ATTENTION = ("attention_mass(query='last')", "attention_mass(query='text')")


def _lock() -> dict[str, str]:
    """``name -> version`` pinned in requirements.lock (names normalised as PEP 503)."""
    try:
        text = (ROOT / "requirements.lock").read_text()
    except OSError:
        return {}
    return {_norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", text, re.M)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def environment(cuda: bool) -> dict:
    """Python, torch (and CUDA device), and every distribution imported so far with its version next to
    the lock's (``lock_mismatch``: those that differ); call again at the end to see what the run imported."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "cuda_runtime": torch.version.cuda if cuda else None,
    }
    env.update(distributions())
    return env


def distributions() -> dict:
    lock = _lock()
    tops = {name.split(".")[0] for name in list(sys.modules)}
    dists = set()
    mapping = md.packages_distributions()
    for top in tops:
        dists.update(mapping.get(top, []))
    versions, mismatch = {}, {}
    for d in sorted(dists, key=_norm):
        try:
            v = md.version(d)
        except md.PackageNotFoundError:
            continue
        versions[_norm(d)] = v
        want = lock.get(_norm(d))
        if want is not None and want != v:
            mismatch[_norm(d)] = {"used": v, "lock": want}
    return {"packages": versions, "lock_mismatch": mismatch}


def targets(result: dict) -> dict:
    """The issue's targets, evaluated on the rows (GPU runs only): per model, attention recording at the
    longest attention length ≤ 1.15× time and ≤ 1.1× peak memory; patching ≤ 0.6 forward-equivalents."""
    out = {"thresholds": TARGETS, "evaluated": not result["dry_run"], "per_model": {}}
    rows = result["rows"]
    for model in result["models"]:
        att = [r for r in rows if r.get("model") == model and r.get("instrument") in ATTENTION]
        longest = max((r["visual_tokens"] for r in att if r.get("visual_tokens")), default=None)
        at = [r for r in att if r.get("visual_tokens") == longest]
        ok_att = None
        if at and all(r.get("status") == "ok" for r in at):
            ok_att = all(
                r["time_ratio"] <= TARGETS["attention_time_ratio"]
                and r["memory_ratio"] <= TARGETS["attention_memory_ratio"]
                for r in at
            )
        pat = [
            r
            for r in rows
            if r.get("model") == model and r.get("forward_equivalents_per_patched_run") is not None
        ]
        ok_pat = (
            all(
                r["forward_equivalents_per_patched_run"] <= TARGETS["patching_forward_equivalents"]
                for r in pat
            )
            if pat
            else None
        )
        out["per_model"][model] = {
            "attention_visual_tokens": longest,
            "attention_met": ok_att,
            "patching_met": ok_pat,
        }
    return out


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def line(r: dict) -> str:
    if "check" in r:
        return (
            f"{r['model']}: check {r['check']} {r.get('dtype', '')}: {_f(r.get('value'), '{:.2e}')} "
            f"(tol {_f(r.get('tolerance'), '{:.2e}')}) {'pass' if r.get('passed') else r.get('status', 'FAIL')}"
        )
    s = (
        f"{r['model']}: {r['instrument']} @ {r.get('visual_tokens')} visual tokens: "
        f"time {_f(r.get('time_ratio'))}×, memory {_f(r.get('memory_ratio'))}×"
    )
    if r.get("forward_equivalents_per_patched_run") is not None:
        s += f", {r['forward_equivalents_per_patched_run']:.3f} fwd-eq/patched run"
    if r.get("status") != "ok":
        s += f" [{r.get('status')}: {r.get('reason')}]"
    return s


def markdown(result: dict) -> str:
    """The README's table: one line per row, then the checks and the targets."""
    env = result["environment"]
    dry = " (DRY RUN: scaled-down configs on the CPU, not a measurement)" if result["dry_run"] else ""
    head = (
        f"**{result['device']}**, {result['date']}{dry}; torch {env['torch']}, transformers "
        f"{env['packages'].get('transformers', '?')}; baseline = {result['baseline']}; memory = "
        f"{result['memory_method']}."
    )
    lines = [
        head,
        "",
        "| model | instrument | visual tokens | seq | time × plain | peak memory × plain | "
        "activation memory × plain | fwd-eq / patched run | plain s | status |",
        "|" + "---|" * 10,
    ]
    for r in result["rows"]:
        st = r.get("status", "ok")
        if st != "ok":
            st = f"{st}: {str(r.get('reason', ''))[:80]}"
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r.get("model")),
                    str(r.get("instrument")),
                    _f(r.get("visual_tokens"), "{}"),
                    _f(r.get("seq_len"), "{}"),
                    _f(r.get("time_ratio"), "{:.3f}×"),
                    _f(r.get("memory_ratio"), "{:.3f}×"),
                    _f(r.get("extra_memory_ratio"), "{:.3f}×"),
                    _f(r.get("forward_equivalents_per_patched_run")),
                    _f(r.get("plain_seconds"), "{:.4f}"),
                    st,
                ]
            )
            + " |"
        )
    if result["checks"]:
        lines += ["", "| model | check | dtype | value | tolerance | passed |", "|---|---|---|---|---|---|"]
        for c in result["checks"]:
            lines.append(
                f"| {c['model']} | {c['check']} | {c.get('dtype', '–')} | {_f(c.get('value'), '{:.2e}')} | "
                f"{_f(c.get('tolerance'), '{:.2e}')} | {c.get('passed')}"
                f"{'' if c.get('status') in (None, 'ok') else ' (' + str(c.get('reason'))[:80] + ')'} |"
            )
    t = result.get("targets", {})
    if t.get("evaluated"):
        lines += [
            "",
            "Targets (attention ≤ 1.15× time and ≤ 1.1× memory at the longest length; patching ≤ 0.6 "
            "fwd-eq): "
            + "; ".join(
                f"{m}: attention {v['attention_met']}, patching {v['patching_met']}"
                for m, v in t["per_model"].items()
            ),
        ]
    return "\n".join(lines) + "\n"


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _finite(x, path: str, bad: list):
    """``x`` with every non-finite float replaced by None (JSON has no NaN); ``bad`` collects where."""
    if isinstance(x, float) and not math.isfinite(x):
        bad.append(path)
        return None
    if isinstance(x, dict):
        return {k: _finite(v, f"{path}.{k}", bad) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", bad) for i, v in enumerate(x)]
    return x


def write(result: dict, name: str, results_dir: Path, out: str | None) -> None:
    """``results_dir/<name>.json`` and ``.md`` (atomically), copied into ``$OUT`` when it is set."""
    results_dir.mkdir(parents=True, exist_ok=True)
    result["environment"].update(distributions())
    bad: list = []
    clean = _finite(result, "result", bad)
    clean["non_finite"] = bad  # where a NaN or infinity was written as null
    _atomic(results_dir / f"{name}.json", json.dumps(clean, indent=1, default=str, allow_nan=False) + "\n")
    _atomic(results_dir / f"{name}.md", markdown(result))
    if out:
        for ext in ("json", "md"):
            shutil.copyfile(results_dir / f"{name}.{ext}", Path(out) / f"{name}.{ext}")
