"""Benchmark: attention-mass recording vs a plain SDPA forward vs eager ``output_attentions``.

Not a test. Run ``python benchmarks/bench_attention.py [--quick]``; prints one Markdown table whose
ratios were all measured in this run.

What is timed: the decoder (``arch.module(model, "language_model")``) on ``[bos, image × N, text × T]``
random input embeddings, batch 1, no cache, under ``torch.no_grad``:

* ``plain``  — the model's own implementation (SDPA; on a GPU SDPA dispatches to flash/cuDNN);
* ``record`` — the same forward inside :func:`mech.engines.attention_fn.recording` (query = the last
  position, and all text positions), i.e. what :func:`mech.attention_mass` runs;
* ``eager``  — ``attn_implementation="eager"`` with ``output_attentions=True`` (what FastV /
  LVLM-Interpret need), reported as ``OOM`` when it runs out of memory.

Rows: on CPU, the organism's decoder (``organism:balanced`` if built, else a random LLaVA of the
organism's size: 6 Llama layers, hidden 128, 4 heads) at its real length and at ~1k tokens. Time = median
of repeats after a warm-up (one thread, the modes interleaved in every repeat); memory = peak RSS of a
forked process (weights included). The GPU rows (Qwen2.5-VL-7B and LLaVA-1.5-7B at ~1k, 4k and 16k visual
tokens, through ``mech.attention_mass`` itself) live in ``benchmarks/gpu.py``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mech  # noqa: E402
from mech.engines.attention_fn import recording  # noqa: E402
from mech.prepare.groups import GROUPS, TokenGroups  # noqa: E402


def organism_model():
    try:
        return mech.load("organism:balanced"), "organism:balanced"
    except mech.MechError:
        import transformers as T

        cfg = T.LlavaConfig(
            vision_config=dict(
                model_type="clip_vision_model",
                hidden_size=128,
                intermediate_size=384,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            text_config=dict(
                model_type="llama",
                hidden_size=128,
                intermediate_size=384,
                num_hidden_layers=6,
                num_attention_heads=4,
                num_key_value_heads=4,
                vocab_size=64,
                max_position_embeddings=4096,
            ),
            image_token_index=4,
        )
        return mech.load((T.LlavaForConditionalGeneration(cfg).eval(), None)), "random organism-size LLaVA"


def _setup(m, n_img: int, n_txt: int, device, dtype):
    lm = m.arch.module(m.model, "language_model")
    length = 1 + n_img + n_txt
    labels = torch.full((1, length), GROUPS.index("text"))
    labels[0, 0] = GROUPS.index("bos")
    labels[0, 1 : 1 + n_img] = GROUPS.index("image")
    groups = TokenGroups(labels)
    x = torch.randn(1, length, m.arch.d_model, device=device, dtype=dtype)
    return lm, x, groups


def _queries(groups, query):
    if query == "last":
        return groups.last()[:, None], torch.ones(1, 1, dtype=torch.bool)
    idx = groups.mask("text")[0].nonzero().flatten()[None]
    return idx, torch.ones_like(idx, dtype=torch.bool)


def _run(m, lm, x, groups, mode: str):
    if mode == "plain":
        return lm(inputs_embeds=x, use_cache=False)
    if mode == "eager":
        return lm(inputs_embeds=x, use_cache=False, output_attentions=True)
    idx, valid = _queries(groups, mode.split(":")[1])
    with recording(m, idx.to(x.device), valid, groups.one_hot().to(x.device)):
        return lm(inputs_embeds=x, use_cache=False)


def _measure(m, lm, x, groups, mode: str, reps: int):
    """(median seconds, peak RSS bytes of the process) of ``mode`` after a warm-up, on the CPU."""
    before = m.model.config.get_text_config()._attn_implementation
    if mode == "eager":
        m.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            _run(m, lm, x, groups, mode)  # warm-up
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                _run(m, lm, x, groups, mode)
                times.append(time.perf_counter() - t)
        return statistics.median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        if mode == "eager":
            m.model.set_attn_implementation(before)


def _cpu_peak_child(n_img, n_txt, mode, queue):
    m, _ = organism_model()
    torch.manual_seed(0)
    lm, x, groups = _setup(m, n_img, n_txt, "cpu", torch.float32)
    queue.put(_measure(m, lm, x, groups, mode, 1)[1])


def _cpu_peak(n_img, n_txt, mode):
    """Peak RSS of a fresh forked process that loads the model and runs ``mode`` (its own peak)."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_cpu_peak_child, args=(n_img, n_txt, mode, q))
    p.start()
    out = q.get()
    p.join()
    return out


def _cpu_times(n_img, n_txt, reps):
    """Median time per mode, the modes interleaved in every repeat so that load drift cancels."""
    m, _ = organism_model()
    torch.manual_seed(0)
    lm, x, groups = _setup(m, n_img, n_txt, "cpu", torch.float32)
    times = {mode: [] for mode in MODES}
    for r in range(reps + 1):
        for mode in MODES:
            before = m.model.config.get_text_config()._attn_implementation
            if mode == "eager":
                m.model.set_attn_implementation("eager")
            try:
                with torch.no_grad():
                    t = time.perf_counter()
                    _run(m, lm, x, groups, mode)
                    if r:
                        times[mode].append(time.perf_counter() - t)
            finally:
                m.model.set_attn_implementation(before)
    return {mode: statistics.median(v) for mode, v in times.items()}


MODES = ("plain", "record:last", "record:text", "eager")


def _fmt(v, base):
    if v == "OOM":
        return "OOM"
    return f"{v / base:.3f}×"


def table_rows(name, n_img, n_txt, results, unit_mem):
    t0, m0 = results["plain"]
    cells = [name, str(1 + n_img + n_txt), str(n_img), f"{t0 * 1e3:.1f}", f"{m0 / unit_mem:.2f}"]
    for mode in MODES[1:]:
        t, mem = results[mode]
        cells += [_fmt(t, t0), "OOM" if mem is None else f"{mem / m0:.3f}×"]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args(argv)
    # one CPU thread: on a shared, oversubscribed machine OpenMP thread pools make every small op
    # cost milliseconds of spinning, which would swamp what is being measured
    torch.set_num_threads(1)
    header = (
        "| model | seq | visual tokens | plain ms | plain peak | record(last) time | record(last) mem | "
        "record(text) time | record(text) mem | eager+output_attentions time | eager mem |"
    )
    lines = [header, "|" + "---|" * 11]
    _, cpu_name = organism_model()
    reps = args.reps or (3 if args.quick else 7)
    for n_img, n_txt in ((16, 12), (1008, 16)):
        times = _cpu_times(n_img, n_txt, reps)
        res = {mode: (times[mode], _cpu_peak(n_img, n_txt, mode)) for mode in MODES}
        lines.append(table_rows(f"{cpu_name} (CPU fp32; peak RSS MiB)", n_img, n_txt, res, 2**20))
    lines.append("| (GPU rows: python benchmarks/gpu.py) |" + " |" * 10)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
