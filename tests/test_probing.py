"""Linear probes: decodable attributes decode, random labels do not (invariants on a tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech.errors import InputError
from mech.measure.probing import linear_probe, residual_features
from mech.testing.tiny import tiny_model


def _samples(n=60):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        bright = bool(i % 2)
        base = 200 if bright else 40
        img = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype("uint8")
        out.append(
            {"id": str(i), "image": Image.fromarray(img), "bright": bright, "coin": bool(rng.random() < 0.5)}
        )
    return out


@pytest.fixture(scope="module")
def m():
    return mech.load(tiny_model("llava"))


def _prepare(m):
    return lambda batch: m.prepare([s["image"] for s in batch], ["what colour is the shape ?"] * len(batch))


def test_features_match_the_cache(m):
    batch = _samples(4)
    inputs = _prepare(m)(batch)
    feats = residual_features(m, inputs)
    _, cache = mech.run_with_cache(m, inputs, ["blocks.1.hook_resid_post"])
    x = cache["blocks.1.hook_resid_post"]
    img = inputs.groups.mask("image")
    torch.testing.assert_close(feats[0, 1, 0], x[0][img[0]].mean(0))
    torch.testing.assert_close(feats[2, 1, 1], x[2, inputs.groups.last()[2]])


def test_probe_decodes_what_is_in_the_image_and_not_noise(m):
    samples = _samples()
    bright = linear_probe(m, samples, lambda s: s["bright"], prepare=_prepare(m))
    assert bright.accuracy[:, 0].min() >= 0.9  # image readout carries brightness at every layer
    coin = linear_probe(m, samples, lambda s: s["coin"], prepare=_prepare(m))
    assert coin.accuracy.mean() < 0.8  # a label independent of the input is not decodable
    assert bright.n_train + bright.n_test == len(samples)


def test_probe_bad_input(m):
    with pytest.raises(InputError, match="at least 10"):
        linear_probe(m, _samples(4), lambda s: s["bright"], prepare=_prepare(m))
    with pytest.raises(InputError, match="single value"):
        linear_probe(m, _samples(12), lambda s: 1, prepare=_prepare(m))
