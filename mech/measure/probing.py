"""Linear probes: how well an image attribute can be decoded from the residual stream, per layer.

For each decoder layer l and each readout position — ``image`` (the mean of ``resid_post`` over
the sample's image tokens) and ``last`` (the answer position) — a multinomial logistic regression
(Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes") is fit on
a training split and scored on held-out samples. A modality-biased model can still *carry* the
image attribute at the answer position while not *using* it; probes show whether it is there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mech.errors import InputError

__all__ = ["READOUTS", "ProbeResult", "linear_probe", "residual_features"]

READOUTS = ("image", "last")


@dataclass(frozen=True)
class ProbeResult:
    """Held-out probe accuracy.

    Attributes:
        accuracy: ``[layer, readout]`` held-out accuracy (fraction correct).
        readouts: names along the last axis.
        classes: the label values.
        majority: accuracy of always answering the most frequent training label (the baseline).
        n_train / n_test: samples in each split.
    """

    accuracy: torch.Tensor
    readouts: tuple[str, ...]
    classes: tuple
    majority: float
    n_train: int
    n_test: int

    def to_frame(self):
        """Tidy ``pandas.DataFrame``, one row per cell of ``accuracy``: columns ``layer, readout, accuracy``
        (``readout`` a Categorical in ``readouts``' order; :func:`mech.frames.tidy`)."""
        from mech.frames import tidy

        return tidy(self.accuracy, {"layer": None, "readout": self.readouts}, value="accuracy")

    def to_json(self) -> dict:
        return {
            "readouts": list(self.readouts),
            "classes": [str(c) for c in self.classes],
            "accuracy": {r: self.accuracy[:, i].tolist() for i, r in enumerate(self.readouts)},
            "majority_baseline": self.majority,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }


@torch.no_grad()
def residual_features(m, inputs, readouts: Sequence[str] = READOUTS) -> torch.Tensor:
    """``[batch, layer, readout, d_model]`` fp32: ``resid_post`` mean over image tokens / at the last position."""
    from mech.engines.hooks import run_with_cache

    inputs = m.inputs(inputs)
    g = inputs.groups
    names = [f"blocks.{l}.hook_resid_post" for l in range(m.arch.n_layers)]
    _, cache = run_with_cache(m, inputs, names)
    rows = torch.arange(inputs["input_ids"].shape[0])
    feats = []
    for name in names:
        x = cache[name].float()
        per = []
        for r in readouts:
            if r == "last":
                per.append(x[rows, g.last()])
            else:
                w = g.mask(r).float()
                if not bool((w.sum(1) > 0).all()):
                    raise InputError(
                        f"readout {r!r} needs {r} tokens in every sample; filter the samples first."
                    )
                per.append((x * w[..., None]).sum(1) / w.sum(1, keepdim=True))
        feats.append(torch.stack(per, 1))
    return torch.stack(feats, 1).cpu()


def _fit_score(
    xtr, ytr, xte, yte, n_classes: int, steps: int, l2: float, generator: torch.Generator
) -> float:
    mu, sd = xtr.mean(0), xtr.std(0).clamp(min=1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    # nn.Linear's own initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from the probe's generator
    # (never the global torch RNG: a probe leaves the caller's random state as it was)
    lin = torch.nn.utils.skip_init(torch.nn.Linear, xtr.shape[1], n_classes)
    bound = 1.0 / math.sqrt(xtr.shape[1])
    with torch.no_grad():
        lin.weight.uniform_(-bound, bound, generator=generator)
        lin.bias.uniform_(-bound, bound, generator=generator)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xtr), ytr) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((lin(xte).argmax(-1) == yte).float().mean())


def linear_probe(
    m,
    samples: Sequence[dict],
    label: Callable[[dict], object],
    *,
    prepare: Callable | None = None,
    readouts: Sequence[str] = READOUTS,
    train_frac: float = 0.7,
    batch_size: int = 32,
    seed: int = 0,
    steps: int = 100,
    l2: float = 1e-3,
) -> ProbeResult:
    """Fit and score a linear probe for ``label(sample)`` at every layer and readout.

    Args:
        m: a loaded model; ``samples``: data samples with images.
        label: sample -> class (e.g. ``lambda s: s["attributes"]["objects"][0]["color"]``).
        prepare: samples -> inputs (default ``mech.conditions.condition_inputs(m, batch, "complete")``).
        train_frac: fraction of samples used to fit (the rest is held out); split seeded.
        seed: seeds the split and the probes' initial weights, through local ``torch.Generator`` s
            (the global torch RNG is neither reseeded nor advanced).

    Returns:
        :class:`ProbeResult` with held-out accuracy ``[layer, readout]``.

    Raises:
        InputError: fewer than 10 samples or a single class.
    """
    if len(samples) < 10:
        raise InputError(f"a probe needs at least 10 samples; got {len(samples)}.")
    if prepare is None:
        from mech.conditions import condition_inputs

        def prepare(batch):
            return condition_inputs(m, batch, "complete")

    labels = [label(s) for s in samples]
    classes = tuple(sorted(set(labels), key=str))
    if len(classes) < 2:
        raise InputError(f"the label has a single value {classes}; probe an attribute that varies.")
    y = torch.tensor([classes.index(v) for v in labels])
    feats = torch.cat(
        [
            residual_features(m, prepare(list(samples[i : i + batch_size])), readouts)
            for i in range(0, len(samples), batch_size)
        ]
    )
    perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
    cut = int(train_frac * len(samples))
    tr, te = perm[:cut], perm[cut:]
    acc = torch.zeros(feats.shape[1], len(readouts))
    init = torch.Generator().manual_seed(seed)  # the probes' initial weights; the global RNG is untouched
    for l in range(feats.shape[1]):
        for r in range(len(readouts)):
            acc[l, r] = _fit_score(
                feats[tr, l, r], y[tr], feats[te, l, r], y[te], len(classes), steps, l2, init
            )
    majority = float((y[te] == torch.bincount(y[tr], minlength=len(classes)).argmax()).float().mean())
    return ProbeResult(acc, tuple(readouts), classes, majority, len(tr), len(te))
