"""Input conditions and feature corruption (issue 4).

Oracles: pixel values of the replaced images; the decoder's ``inputs_embeds`` captured by a
hand-written forward pre-hook (registered after mech's, so it sees what the decoder receives),
compared with the clean embeddings edited by hand (Meng et al. 2022 noise: 3 × std; the mean).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech.conditions import (
    BASIC_PROMPT,
    CONDITIONS,
    FEATURE_CONDITIONS,
    INPUT_CONDITIONS,
    SAME_LENGTH,
    apply_condition,
    condition_inputs,
    feature_condition,
)
from mech.errors import ConfigError, InputError, UnsupportedArchitectureError
from mech.testing.tiny import tiny_model

RNG = np.random.default_rng(0)
IMG = Image.fromarray(RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB")  # 40 wide, 30 high


def sample(i=0, images=(IMG,)):
    return {
        "id": f"s{i}",
        "question": "what colour is the shape ?",
        "images": list(images),
        "options": ["red", "blue"],
        "answer": "A",
        "prompt_style": "bare",
    }


@pytest.fixture(scope="module")
def llava():
    model, proc = tiny_model("llava")
    return mech.load((model, proc))


def test_interface_constants():
    assert CONDITIONS == (
        "complete",
        "white_image",
        "black_image",
        "noise_image",
        "no_image",
        "image_only",
        "visual_noise",
        "visual_mean",
    )
    assert INPUT_CONDITIONS == CONDITIONS[:6] and FEATURE_CONDITIONS == ("visual_noise", "visual_mean")
    assert BASIC_PROMPT == "Based on the provided images, please answer the question."
    assert "no_image" not in SAME_LENGTH and "image_only" not in SAME_LENGTH


def test_replaced_images_keep_size_and_id():
    s = sample()
    for cond, value in (("white_image", 255), ("black_image", 0)):
        out = apply_condition(s, cond)
        assert out["id"] == "s0" and out["condition"] == cond
        arr = np.asarray(out["images"][0])
        assert out["images"][0].size == (40, 30) and arr.shape == (30, 40, 3)
        assert (arr == value).all()
    assert np.array_equal(np.asarray(s["images"][0]), np.asarray(IMG))  # the input is not modified
    assert s["question"] == "what colour is the shape ?" and "condition" not in s


def test_noise_image_is_seeded_per_sample():
    a = np.asarray(apply_condition(sample(0), "noise_image", seed=1)["images"][0]).astype(float)
    again = np.asarray(apply_condition(sample(0), "noise_image", seed=1)["images"][0]).astype(float)
    other_seed = np.asarray(apply_condition(sample(0), "noise_image", seed=2)["images"][0]).astype(float)
    other_id = np.asarray(apply_condition(sample(1), "noise_image", seed=1)["images"][0]).astype(float)
    assert a.shape == (30, 40, 3) and np.array_equal(a, again)
    assert not np.array_equal(a, other_seed) and not np.array_equal(a, other_id)
    assert abs(a.mean() - 128) < 6 and 50 < a.std() < 70  # N(128, 64^2), clipped to [0, 255]


def test_no_image_image_only_and_feature_conditions():
    s = sample(images=(IMG, IMG))
    assert apply_condition(s, "no_image")["images"] == []
    io = apply_condition(s, "image_only")
    assert io["question"] == BASIC_PROMPT and io["images"] == s["images"] and io["options"] == s["options"]
    for cond in ("complete", *FEATURE_CONDITIONS):
        out = apply_condition(s, cond)
        assert out is not s and out["images"] == s["images"] and out["question"] == s["question"]
    assert apply_condition(sample(images=()), "no_image")["images"] == []
    assert apply_condition(sample(images=()), "complete")["images"] == []


def test_bad_condition_and_missing_image():
    with pytest.raises(ConfigError, match="visual_mean"):
        apply_condition(sample(), "blurred")
    for cond in ("white_image", "black_image", "noise_image", "image_only", "visual_noise"):
        with pytest.raises(InputError, match="no image"):
            apply_condition(sample(images=()), cond)


def test_condition_inputs_lengths_and_groups(llava):
    batch = [sample(0), dict(sample(1), question="how many shapes are there ?")]
    complete = condition_inputs(llava, batch, "complete")
    assert complete.ids == ("s0", "s1") and complete.condition == "complete"
    for cond in ("white_image", "black_image", "noise_image"):
        other = condition_inputs(llava, batch, cond)
        assert torch.equal(other["input_ids"], complete["input_ids"])  # same tokens, other pixels
        assert not torch.equal(other["pixel_values"], complete["pixel_values"])
    none = condition_inputs(llava, batch, "no_image")
    assert none.groups.mask("image").sum() == 0 and complete.groups.mask("image").sum() > 0
    io = condition_inputs(llava, batch, "image_only")
    text = llava.tokenizer.decode(io["input_ids"][0][io.groups.mask("text")[0]])
    assert text.split() == BASIC_PROMPT.replace(".", " .").replace(",", " ,").split()
    custom = condition_inputs(llava, batch, "complete", prompt=lambda s: "what shape ?")
    assert llava.tokenizer.decode(custom["input_ids"][0][custom.groups.mask("text")[0]]).split() == [
        "what",
        "shape",
        "?",
    ]


def _capture(m, run):
    seen = {}

    def grab(module, args, kwargs):
        seen.setdefault("embeds", kwargs["inputs_embeds"].detach().clone())

    h = m.arch.module(m.model, "language_model").register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = run()
    finally:
        h.remove()
    return seen["embeds"], out


def test_feature_condition_against_hand_edited_embeddings(llava):
    inputs = llava.inputs(condition_inputs(llava, [sample(0), sample(1)], "complete"))
    vis = inputs.groups.mask("image")
    lm = llava.arch.module(llava.model, "language_model")
    before = dict(lm._forward_pre_hooks)
    with torch.no_grad():
        clean, clean_out = _capture(llava, lambda: llava.model(**inputs).logits)
        for cond in FEATURE_CONDITIONS:
            with feature_condition(llava, inputs, cond, seed=3):
                got, out = _capture(llava, lambda: llava.model(**inputs).logits)
            expected = clean.clone()
            v = clean[vis]
            if cond == "visual_noise":
                noise = torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
                expected[vis] = v + 3.0 * v.std() * noise
            else:
                expected[vis] = v.mean(0)
            torch.testing.assert_close(got, expected)
            assert torch.equal(got[~vis], clean[~vis])  # text, template and bos untouched
            assert not torch.allclose(out, clean_out)
        given = torch.full((clean.shape[-1],), 0.5)
        with feature_condition(llava, inputs, "visual_mean", mean=given):
            got, _ = _capture(llava, lambda: llava.model(**inputs).logits)
        assert torch.equal(got[vis], given.expand_as(got[vis]))
        with feature_condition(llava, inputs, "white_image"):  # input conditions: no hook
            assert dict(lm._forward_pre_hooks).keys() == before.keys()
    assert dict(lm._forward_pre_hooks).keys() == before.keys()


def test_feature_condition_removes_only_its_hook_on_error(llava):
    inputs = condition_inputs(llava, [sample(0)], "complete")
    lm = llava.arch.module(llava.model, "language_model")
    other = lm.register_forward_pre_hook(lambda mod, args: None)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with feature_condition(llava, inputs, "visual_noise"):
                assert len(lm._forward_pre_hooks) == 2
                raise RuntimeError("boom")
        assert list(lm._forward_pre_hooks) == [other.id]
    finally:
        other.remove()


def test_feature_condition_during_generation_and_refusals(llava):
    inputs = condition_inputs(llava, [sample(0)], "complete", padding_side="left")
    with torch.no_grad(), feature_condition(llava, inputs, "visual_noise"):
        out = llava.model.generate(**llava.inputs(inputs), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    no_img = condition_inputs(llava, [sample(0)], "no_image")
    with pytest.raises(InputError, match="image or video tokens"):
        with feature_condition(llava, no_img, "visual_mean"):
            pass
    model, proc = tiny_model("mllama")
    ml = mech.load((model, proc))
    with pytest.raises(UnsupportedArchitectureError):
        with feature_condition(ml, condition_inputs(ml, [sample(0)], "complete"), "visual_noise"):
            pass
