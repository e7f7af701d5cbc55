"""The rows of the GPU benchmark (``benchmarks/gpu.py``): each instrument through mech's public API on one
model, timed against the plain forward of the same inputs in the same run.

The unit of every ratio, ``plain``: ``model(**inputs, use_cache=False, logits_to_keep=1)`` under
``torch.no_grad`` with the model's SDPA attention: the cheapest forward that answers the question (the
answer position's logits). ``time_ratio`` = median wall seconds / plain's; ``memory_ratio`` = peak
allocated memory / plain's, weights included (``extra_memory_ratio``: the same over the memory resident
before the run, i.e. activations only).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from gpu_models import Images, synthetic
from timing import Timing, free, measure

QUERIES = ("last", "text")
POSITIONS = ("image", "text", "last")
GIB = 2**30


@dataclass
class Ctx:
    """One built model in the run: ``m`` (MechModel), ``family``, ``label`` (what the rows name), ``cfg``,
    ``cuda``, ``reps`` (timed repeats per measurement) and ``plain`` (visual tokens -> plain Timing)."""

    m: object
    family: str
    label: str
    cfg: object
    cuda: bool
    reps: int
    plain: dict

    def inputs(self, samples: list[Images], pixels: str = "random", seed: int = 0):
        return self.m.inputs(synthetic(self.family, self.cfg, samples, seed=seed, pixels=pixels))


def plain_forward(m, inputs):
    with torch.no_grad():
        return m.model(**inputs, use_cache=False, logits_to_keep=1).logits


def seq_len(inputs) -> int:
    return int(inputs["input_ids"].shape[1])


def row(
    ctx: Ctx,
    instrument: str,
    visual_tokens: int,
    seq: int | None,
    t: Timing | None,
    base: Timing | None,
    **extra,
) -> dict:
    """One result row; ratios are None (and ``status`` says why) where either side was not measured."""
    out = {
        "model": ctx.label,
        "family": ctx.family,
        "instrument": instrument,
        "visual_tokens": visual_tokens,
        "seq_len": seq,
        "time_ratio": None,
        "memory_ratio": None,
        "extra_memory_ratio": None,
        "seconds": None,
        "plain_seconds": None,
        "peak_gib": None,
        "plain_peak_gib": None,
        "status": "ok",
    }
    if t is not None and t.oom:
        out.update(status="oom", reason=t.error)
    elif base is None or base.seconds is None:
        out.update(status="no_baseline", reason="the plain forward at this length did not run")
    if t is not None and not t.oom:
        out.update(seconds=t.seconds, peak_gib=t.peak_bytes / GIB)
    if base is not None and base.seconds is not None:
        out.update(plain_seconds=base.seconds, plain_peak_gib=base.peak_bytes / GIB)
        if t is not None and not t.oom:
            out["time_ratio"] = t.seconds / base.seconds
            out["memory_ratio"] = t.peak_bytes / base.peak_bytes
            rise = base.peak_bytes - base.base_bytes
            if rise > 0:
                out["extra_memory_ratio"] = (t.peak_bytes - t.base_bytes) / rise
    limit = ctx.cfg.get_text_config().max_position_embeddings
    if seq is not None and seq > limit:  # the compute is what is timed; random weights have no trained range
        out["beyond_max_position_embeddings"] = limit
    out.update(extra)
    return out


@contextlib.contextmanager
def eager_text(m):
    """The decoder's attention switched to eager (the vision tower keeps SDPA), restored afterwards; yields how
    it was set (``{"text_config": "eager"}`` or ``"eager"`` for the whole model where the first is refused)."""
    before = m.model.config._attn_implementation
    how: object = {"text_config": "eager"}
    try:
        m.model.set_attn_implementation(how)
    except (ValueError, TypeError, KeyError):
        how = "eager"
        m.model.set_attn_implementation(how)
    try:
        yield how
    finally:
        m.model.set_attn_implementation(before)


def attention_rows(ctx: Ctx, images: Images) -> list[dict]:
    """Plain forward, ``mech.attention_mass`` (query last and all text queries) and eager
    ``output_attentions`` at one length (batch 1)."""
    import mech

    n = images.tokens(ctx.family, ctx.cfg)
    inputs = ctx.inputs([images])
    base = measure(lambda: plain_forward(ctx.m, inputs), cuda=ctx.cuda, reps=ctx.reps)
    ctx.plain[n] = base
    rows = [row(ctx, "plain forward (baseline)", n, seq_len(inputs), base, base)]
    for q in QUERIES:
        t = measure(lambda q=q: mech.attention_mass(ctx.m, inputs, query=q), cuda=ctx.cuda, reps=ctx.reps)
        rows.append(row(ctx, f"attention_mass(query={q!r})", n, seq_len(inputs), t, base))
    free(ctx.cuda)

    def eager():
        with torch.no_grad():
            out = ctx.m.model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True)
            return len(out.attentions)

    with eager_text(ctx.m) as how:
        t = measure(eager, cuda=ctx.cuda, reps=ctx.reps)
    rows.append(row(ctx, "eager output_attentions", n, seq_len(inputs), t, base, eager_set=str(how)))
    free(ctx.cuda)
    return rows


def _base(ctx: Ctx, n: int, inputs) -> Timing:
    if n not in ctx.plain:
        ctx.plain[n] = measure(lambda: plain_forward(ctx.m, inputs), cuda=ctx.cuda, reps=ctx.reps)
    return ctx.plain[n]


def patching_row(ctx: Ctx, images: Images) -> list[dict]:
    """The exact residual sweep: ``mech.activation_patching(sites="resid_pre", positions=(image, text, last))``,
    every layer, white-image corruption, denoising; one timed run (the plain forward warmed the kernels)."""
    from mech.measure.patching import activation_patching

    n = images.tokens(ctx.family, ctx.cfg)
    clean, corrupted = ctx.inputs([images]), ctx.inputs([images], pixels="white")
    base = _base(ctx, n, clean)
    box = {}

    def sweep():
        box["r"] = activation_patching(ctx.m, clean, corrupted, sites="resid_pre", positions=POSITIONS)

    t = measure(sweep, cuda=ctx.cuda, reps=1, warmup=0)
    extra = {}
    if "r" in box:
        r = box.pop("r")
        extra = {
            "forward_equivalents_per_patched_run": r.forward_equivalents,
            "n_patched_runs": r.n_patched_runs,
        }
        if t.seconds is not None and base.seconds:
            extra["time_ratio_per_patched_run"] = t.seconds / r.n_patched_runs / base.seconds
    free(ctx.cuda)
    return [row(ctx, "activation_patching(resid_pre sweep)", n, seq_len(clean), t, base, **extra)]


def deeplift_row(ctx: Ctx, images: Images) -> list[dict]:
    """``mech.attribution_patching(method="deeplift")``: default sites (resid_pre, attn_out, mlp_out) ×
    (image, text, last), white-image corruption, denoising."""
    from mech.measure.patching.attribution import attribution_patching

    n = images.tokens(ctx.family, ctx.cfg)
    clean, corrupted = ctx.inputs([images]), ctx.inputs([images], pixels="white")
    base = _base(ctx, n, clean)
    t = measure(
        lambda: attribution_patching(ctx.m, clean, corrupted, positions=POSITIONS, method="deeplift"),
        cuda=ctx.cuda,
        reps=max(1, ctx.reps - 1),
    )
    free(ctx.cuda)
    return [row(ctx, "attribution_patching(method='deeplift')", n, seq_len(clean), t, base)]


def contribution_row(ctx: Ctx, samples: list[Images]) -> list[dict]:
    """``mech.curves.modality_contributions`` with its default arguments (estimators and removal) on a
    batch of samples with images of different sizes, the target the model's own top-2 tokens; coverage =
    per estimator, the fraction of samples with a finite image and text contribution. From raw inputs the
    default donors come from the same batch with as many image positions, so every size comes twice
    (``mech contrib`` instead pairs over the data set and resizes the donor's images, which needs the
    samples' images and the processor)."""
    from mech.curves import modality_contributions

    inputs = ctx.inputs(samples, seed=1)
    per = [s.tokens(ctx.family, ctx.cfg) for s in samples]
    with torch.no_grad():
        top = plain_forward(ctx.m, inputs)[:, -1].float().topk(2).indices.cpu()
    answer, counterfactual = top[:, 0], top[:, 1]
    base = measure(lambda: plain_forward(ctx.m, inputs), cuda=ctx.cuda, reps=ctx.reps)
    box = {}

    def contrib():
        box["c"] = modality_contributions(ctx.m, inputs, answer, counterfactual)

    t = measure(contrib, cuda=ctx.cuda, reps=1, warmup=0)
    coverage = {}
    if "c" in box:
        c = box.pop("c")
        cols = [c.groups.index("image"), c.groups.index("text")]
        for est, x in c.per_sample.items():
            ok = torch.isfinite(x[:, :, cols]).any(1).all(-1)
            coverage[est] = {"samples": int(ok.sum()), "n": int(x.shape[0])}
    free(ctx.cuda)
    return [
        row(
            ctx,
            "modality_contributions(defaults)",
            max(per),
            seq_len(inputs),
            t,
            base,
            batch=len(samples),
            visual_tokens_per_sample=per,
            coverage=coverage,
        )
    ]
