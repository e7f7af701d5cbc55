"""Prefix reuse (mech.engines.prefix) and hook points recognise transformers' arguments by type, not by name."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Cache, DynamicCache

import mech
from mech.engines.hooks import find_hidden
from mech.engines.prefix import capture, run_from
from mech.testing.tiny import IMAGE_SIZES, tiny_model


def _llava():
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    size = IMAGE_SIZES["llava"]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return m, m.inputs(m.prepare([img, img], ["what colour is the shape ?", "what is on the left ?"]))


def test_a_cache_under_any_keyword_is_dropped_and_the_replay_equals_the_forward():
    """A Cache the layers receive under a keyword mech has never heard of (the next rename) is not
    replayed: the replay from every layer equals the model's own logits, and no cache grows."""
    m, inputs = _llava()
    foreign = DynamicCache(config=m.model.config.get_text_config())
    handles = [
        m.arch.module(m.model, "layer", l).register_forward_pre_hook(
            lambda mod, args, kw: (args, {**kw, "a_future_cache_name": foreign}), with_kwargs=True
        )
        for l in range(m.arch.n_layers)
    ]
    try:
        cap = capture(m, inputs)
    finally:
        for h in handles:
            h.remove()
    assert all(not isinstance(v, Cache) for kw in cap.layer_kwargs for v in kw.values())
    assert all("a_future_cache_name" in kw and kw["a_future_cache_name"] is None for kw in cap.layer_kwargs)
    with torch.no_grad():
        want = m.model(**inputs).logits
    want = want[torch.arange(2), inputs.groups.last()].float()
    rows = torch.arange(2)
    for start in range(m.arch.n_layers):
        got = run_from(m, cap, start, cap.resid[start], rows)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert foreign.get_seq_length() == 0


def test_find_hidden_by_type():
    h = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.long)
    rope = (torch.randn(2, 5, 4), torch.randn(2, 5, 4))
    assert find_hidden((h,), {"attention_mask": mask}, 8)[0] == 0
    where, got = find_hidden((), {"attention_mask": mask, "position_embeddings": rope, "whatever": h}, 8)
    assert where == "whatever" and got is h
    assert find_hidden((), {"attention_mask": mask}, 8) is None
    with pytest.raises(mech.MechError, match="several arguments"):
        find_hidden((), {"a": h, "b": h.clone()}, 8)


def test_deprecation_future_warnings_fail_the_tests():
    """pyproject's filterwarnings turns FutureWarnings into errors, so a renamed transformers keyword
    that mech still passes fails here while transformers' shim still accepts it."""
    with pytest.raises(FutureWarning):
        warnings.warn(
            "`past_key_values` is deprecated and will be removed in version 5.40.0",
            FutureWarning,
            stacklevel=2,
        )
