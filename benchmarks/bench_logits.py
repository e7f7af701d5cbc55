"""Benchmark: peak memory of instruments that read only the answer position, with the full logits
``[batch, pos, vocab]`` (before) and with the unembedding at the answer position only (after,
:mod:`mech.engines.unembed`), at Qwen2.5-VL's vocabulary of 151,936 entries.

Not a test. Run ``python benchmarks/bench_logits.py [--batch 8] [--words 100]``; prints one Markdown
table (both columns measured in this run) and writes it to ``benchmarks/results/logits.md``.

The model: the tiny random Qwen2.5-VL of :mod:`mech.testing.tiny` (hidden size 32, 2 layers) with its
vocabulary raised to 151,936, so that the unembedding dominates as it does at 7B scale (there, 8 × 2,000
tokens of bf16 logits are ~4.5 GiB per forward). Inputs: ``batch`` chat prompts of ``words`` words
and one 48×32 image each, padded to one length.

Method: each (instrument, mode) runs in a fresh Python process (``--child``), which builds the model
and inputs, runs the instrument once to warm up, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs`` ← 5, Linux ≥ 4.0), reads ``VmRSS``, runs the instrument again and reads
``VmHWM``: the peak is ``VmHWM − VmRSS`` (the memory the call itself took on top of the model and
inputs; torch's CPU allocator returns large blocks to the system, so tracemalloc would not see them).
*Before* is the same code with the unembedding hook replaced by a no-op (full logits, what every
forward did before), *after* the code as it is. ``ratio = before / after``.

``logits_row(instrument, ...)`` is the importable row (``benchmarks/gpu.py`` may reuse it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 151_936
INSTRUMENTS = ("attention_mass", "activation_patching")
#: modules that bind ``unembed_at`` by name (the "before" mode replaces each with a no-op)
_BOUND = ("mech.engines.prefix", "mech.measure.attention", "mech.measure.patching")


def build(vocab: int = VOCAB, family: str = "qwen2_5_vl"):
    """The tiny random ``family`` model with its text vocabulary set to ``vocab``, as a MechModel."""
    import torch
    import transformers as T

    import mech
    from mech.testing.tiny import tiny_processor
    from mech.testing.tiny_families import BUILDERS

    proc = tiny_processor(family)
    config = BUILDERS[family].build_config(proc)
    config.text_config.vocab_size = vocab
    torch.manual_seed(0)
    model = getattr(T, BUILDERS[family].model_class)._from_config(config, dtype=torch.float32).eval()
    return mech.load((model, proc))


def make_inputs(m, batch: int, words: int):
    from mech.testing.tiny import tiny_inputs

    prompt = " ".join(["what colour is the shape ?"] * max(1, words // 6))
    return m.inputs(tiny_inputs(m.model.config.model_type, m.processor, batch=batch, prompt=prompt))


@contextlib.contextmanager
def full_logits():
    """The code before this change: no unembedding hook, so every forward forms ``[batch, pos, vocab]``."""
    import importlib

    mods = [importlib.import_module(name) for name in _BOUND]
    saved = [mod.unembed_at for mod in mods]
    try:
        for mod in mods:
            mod.unembed_at = lambda m, positions: contextlib.nullcontext()
        yield
    finally:
        for mod, fn in zip(mods, saved):
            mod.unembed_at = fn


def _run(m, inputs, instrument: str):
    import torch

    import mech

    if instrument == "attention_mass":
        return mech.attention_mass(m, inputs)
    vocab = m.arch.vocab_size
    b = inputs["input_ids"].shape[0]
    answer, cf = torch.arange(vocab - b, vocab), torch.arange(vocab - 2 * b, vocab - b)
    return mech.activation_patching(
        m,
        inputs,
        inputs,
        sites="resid_post",
        positions="image",
        answer=answer,
        counterfactual=cf,
        normalize=False,
        condition="visual_noise",
    )


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def child(instrument: str, mode: str, batch: int, words: int) -> dict:
    """One measurement in this process (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    m = build()
    inputs = make_inputs(m, batch, words)
    with full_logits() if mode == "before" else contextlib.nullcontext():
        _run(m, inputs, instrument)  # warm-up
        Path("/proc/self/clear_refs").write_text("5")
        base = _status("VmRSS")
        t0 = time.perf_counter()
        _run(m, inputs, instrument)
        seconds = time.perf_counter() - t0
        peak = _status("VmHWM") - base
    return {"peak_bytes": peak, "seconds": seconds, "seq": int(inputs["input_ids"].shape[1])}


def logits_row(instrument: str, batch: int = 8, words: int = 100) -> dict:
    """Peak memory of ``instrument`` before and after, each in a fresh process; one table row (dict)."""
    out = {}
    for mode in ("before", "after"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            instrument,
            mode,
            "--batch",
            str(batch),
            "--words",
            str(words),
        ]
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    seq = out["after"]["seq"]
    mib = 2**20
    return {
        "instrument": instrument,
        "vocab": VOCAB,
        "batch": batch,
        "seq": seq,
        "full_logits_mib": round(batch * seq * VOCAB * 4 / mib, 1),
        "before_mib": round(out["before"]["peak_bytes"] / mib, 1),
        "after_mib": round(out["after"]["peak_bytes"] / mib, 1),
        "ratio": round(out["before"]["peak_bytes"] / max(out["after"]["peak_bytes"], 1), 2),
        "before_s": round(out["before"]["seconds"], 3),
        "after_s": round(out["after"]["seconds"], 3),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| instrument | vocab | batch × pos | fp32 logits [batch, pos, vocab] | peak before | peak after | "
        "ratio | time before | time after |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['instrument']} | {r['vocab']:,} | {r['batch']} × {r['seq']} | {r['full_logits_mib']} MiB | "
        f"{r['before_mib']} MiB | {r['after_mib']} MiB | {r['ratio']}× | {r['before_s']} s | {r['after_s']} s |\n"
        for r in rows
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, metavar=("INSTRUMENT", "MODE"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "logits.md"))
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.batch, a.words)))
        return
    import platform

    import torch

    rows = [logits_row(name, a.batch, a.words) for name in INSTRUMENTS]
    text = (
        f"Peak memory of one call above the loaded model (VmHWM − VmRSS, fresh process per cell), tiny "
        f"Qwen2.5-VL with vocabulary {VOCAB:,}, fp32, CPU ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}); `python benchmarks/bench_logits.py --batch {a.batch} --words {a.words}`.\n\n"
        + table(rows)
    )
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
