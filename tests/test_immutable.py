"""Immutable data (issue 14, item 4): a frozen metric whose per-batch targets come back in the result,
frozen inputs that keep their condition and sample ids, and a hook-point table nobody can rebind."""

import copy
import dataclasses
import pickle

import pytest
import torch

import mech
import mech.engines.hooks as H
from mech.conditions import condition_inputs
from mech.engines.hook_points import HookRegistry
from mech.errors import ConfigError, FrozenError, InputError, MechError
from mech.measure.evaluation.answering import score_batch
from mech.measure.patching import Metric, activation_patching
from mech.measure.patching.attribution import attribution_patching
from mech.prepare.data import load_data
from mech.prepare.inputs import Inputs
from mech.testing.tiny import tiny_inputs, tiny_model


@pytest.fixture(scope="module")
def balanced():
    """The balanced organism and two batches of different samples (different answers)."""
    m = mech.load("organism:balanced")
    samples = list(load_data("organism:shapes", n=8))
    batches = [samples[:4], samples[4:]]
    runs = [(condition_inputs(m, b, "complete"), condition_inputs(m, b, "white_image")) for b in batches]
    return m, batches, runs


def _last_logits(m, inputs):
    with torch.no_grad():
        logits = m.model(**inputs).logits
    return logits[torch.arange(logits.shape[0]), inputs.groups.last()].float()


def _independent_logit_diff(m, clean, corrupted):
    """The default targets and the clean/corrupted logit difference, straight from ``m.model(**inputs)``."""
    lc, lk = _last_logits(m, clean), _last_logits(m, corrupted)
    answer = lc.argmax(-1)
    masked = lk.clone()
    masked[torch.arange(len(answer)), answer] = -torch.inf
    cf = masked.argmax(-1)
    rows = torch.arange(len(answer))
    return answer, cf, lc[rows, answer] - lc[rows, cf], lk[rows, answer] - lk[rows, cf]


@pytest.mark.parametrize("instrument", ["activation_patching", "attribution_patching"])
def test_one_metric_for_two_batches_scores_the_second_like_a_fresh_one(balanced, instrument):
    m, _, runs = balanced
    run = {
        "activation_patching": lambda c, k, metric: activation_patching(
            m, c, k, sites="resid_post", positions=("image", "last"), metric=metric
        ),
        "attribution_patching": lambda c, k, metric: attribution_patching(
            m, c, k, sites="resid_post", positions=("image", "last"), metric=metric
        ),
    }[instrument]
    shared = Metric("logit_diff")
    first = run(*runs[0], shared)
    second = run(*runs[1], shared)
    assert shared == Metric("logit_diff") and shared.answer is None and shared.counterfactual is None
    fresh = run(*runs[1], Metric("logit_diff"))
    by_name = run(*runs[1], "logit_diff")
    # the two batches have different answers, so scoring batch 2 against batch 1's targets would show
    assert not torch.equal(first.answer, second.answer)
    for other in (fresh, by_name):
        assert torch.equal(second.answer, other.answer) and torch.equal(
            second.counterfactual, other.counterfactual
        )
        torch.testing.assert_close(second.clean_metric, other.clean_metric, rtol=0, atol=0)
        torch.testing.assert_close(second.corrupted_metric, other.corrupted_metric, rtol=0, atol=0)
        torch.testing.assert_close(second.patched["resid_post"], other.patched["resid_post"], rtol=0, atol=0)
        torch.testing.assert_close(
            second.effect["resid_post"], other.effect["resid_post"], equal_nan=True, rtol=0, atol=0
        )
    for res, (clean, corrupted) in ((first, runs[0]), (second, runs[1])):
        answer, cf, clean_ld, corr_ld = _independent_logit_diff(m, clean, corrupted)
        assert torch.equal(res.answer, answer) and torch.equal(res.counterfactual, cf)
        assert res.to_json()["answer"] == answer.tolist() and res.to_json()["counterfactual"] == cf.tolist()
        torch.testing.assert_close(res.clean_metric, clean_ld, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(res.corrupted_metric, corr_ld, rtol=1e-5, atol=1e-4)
        assert float(res.clean_metric.mean()) > float(res.corrupted_metric.mean())


def test_metric_is_frozen_and_fixed_targets_are_kept(balanced):
    m, _, runs = balanced
    metric = Metric("prob")
    with pytest.raises(dataclasses.FrozenInstanceError):
        metric.answer = torch.tensor([1, 2, 3, 4])
    with pytest.raises(ConfigError, match="unknown metric"):
        Metric("accuracy")
    with pytest.raises(InputError, match="LongTensor"):
        Metric("prob", answer=torch.tensor([0.5]))
    clean, corrupted = runs[0]
    fixed = torch.tensor([19, 19, 19, 19])
    res = activation_patching(
        m, clean, corrupted, positions="last", layers=[0], metric=Metric("prob", answer=fixed)
    )
    assert torch.equal(res.answer, fixed) and res.counterfactual is None
    p = _last_logits(m, clean).softmax(-1)[:, 19]
    torch.testing.assert_close(res.clean_metric, p, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="given twice"):
        activation_patching(
            m,
            clean,
            corrupted,
            positions="last",
            layers=[0],
            metric=Metric("prob", answer=fixed),
            answer=fixed + 1,
        )
    kl = activation_patching(m, clean, corrupted, positions="last", layers=[0], metric="kl")
    assert kl.answer is None and kl.counterfactual is None
    torch.testing.assert_close(kl.clean_metric, torch.zeros(4), rtol=0, atol=1e-6)


def test_inputs_keep_condition_and_ids_and_are_frozen(balanced):
    m, batches, runs = balanced
    clean, white = runs[0]
    ids = tuple(s["id"] for s in batches[0])
    for x in (white, m.inputs(white), m.inputs(m.inputs(white))):
        assert isinstance(x, Inputs) and x.condition == "white_image" and x.ids == ids
        assert x.groups is not None and x.prompts is not None
    assert m.inputs(white) is white  # already complete: immutable, so shared as it is
    assert m.inputs(dict(white)).condition is None  # a plain dict carries no condition
    torch.testing.assert_close(m.model(**white).logits, m.model(**dict(white)).logits, rtol=0, atol=0)
    for change in (
        lambda: setattr(white, "condition", "complete"),
        lambda: setattr(white, "groups", None),
        lambda: white.__setitem__("input_ids", white["input_ids"]),
        lambda: white.__delitem__("pixel_values"),
        lambda: delattr(white, "ids"),
    ):
        with pytest.raises(FrozenError, match="replace"):
            change()
    with pytest.raises(TypeError):  # item assignment on an immutable mapping
        white["pixel_values"] = white["pixel_values"] * 0
    with pytest.raises(AttributeError):
        white.ids = ()
    assert white.condition == "white_image" and white.ids == ids
    other = white.replace(condition="complete", pixel_values=clean["pixel_values"])
    assert other.condition == "complete" and white.condition == "white_image"
    assert torch.equal(other["pixel_values"], clean["pixel_values"]) and other.groups is white.groups
    assert (
        other.replace(input_ids=clean["input_ids"]).groups is None
    )  # new ids: groups recomputed by m.inputs
    assert "pixel_values" not in other.replace(pixel_values=None)
    for back in (pickle.loads(pickle.dumps(white)), copy.deepcopy(white)):
        assert back.condition == "white_image" and back.ids == ids
        assert torch.equal(back["input_ids"], white["input_ids"])
        assert torch.equal(back.groups.labels, white.groups.labels)
    dbl = white.to(torch.float64)
    assert dbl["pixel_values"].dtype == torch.float64 and dbl["input_ids"].dtype == torch.long
    assert white["pixel_values"].dtype == torch.float32 and dbl.condition == "white_image"
    with pytest.raises(InputError, match="sample ids"):
        white.replace(ids=ids[:1])
    with pytest.raises(ConfigError, match="condition name"):
        white.replace(condition=3)
    with pytest.raises(ConfigError, match="unknown condition"):  # checked where an instrument reads it
        activation_patching(m, clean, white.replace(condition="blurred"), positions="last", layers=[0])


def test_instruments_read_the_condition_and_refuse_a_contradiction(balanced):
    m, batches, runs = balanced
    clean, white = runs[0]
    res = activation_patching(m, clean, white, positions="last", layers=[0])
    assert res.corruption == "white_image" and res.align == "strict"
    no_image = condition_inputs(m, batches[0], "no_image")
    res = activation_patching(
        m, clean, no_image, positions="last", layers=[0]
    )  # align="group" from the inputs
    assert res.corruption == "no_image" and res.align == "group"
    for run in (
        lambda: activation_patching(m, clean, white, positions="last", layers=[0], condition="no_image"),
        lambda: attribution_patching(m, clean, white, positions="last", layers=[0], condition="black_image"),
        lambda: score_batch(m, white, batches[0], "option_text", condition="complete"),
    ):
        with pytest.raises(ConfigError, match="contradicts the inputs"):
            run()
    assert issubclass(ConfigError, MechError)
    # complete inputs may run under a feature condition: the tokens stay, the forward changes
    res = activation_patching(m, clean, clean, positions="last", layers=[0], condition="visual_noise")
    assert res.corruption == "visual_noise"
    assert float((res.clean_metric - res.corrupted_metric).abs().max()) > 0
    noisy = condition_inputs(m, batches[0], "visual_noise")
    again = activation_patching(m, clean, noisy, positions="last", layers=[0])
    torch.testing.assert_close(again.corrupted_metric, res.corrupted_metric, rtol=0, atol=0)


def _attach_ln2(m, point, fn):
    """An extra per-layer point: the output of the pre-MLP norm."""

    def hook(mod, args, out):
        return fn(out)

    return [m.arch.module(m.model, "ln2", point.layer).register_forward_hook(hook)]


def test_hook_points_cannot_be_rebound_and_extra_points_are_scoped():
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    inputs = m.inputs(tiny_inputs("llava", proc, batch=2))
    before = (H.HOOK_POINTS, H.PER_LAYER, H.GLOBAL)
    assert not hasattr(H, "register_hook_point")
    for name in ("HOOK_POINTS", "PER_LAYER", "GLOBAL"):
        with pytest.raises(FrozenError, match="cannot be"):
            setattr(H, name, ())
        with pytest.raises(FrozenError):
            delattr(H, name)
    with pytest.raises(TypeError):
        H.HOOK_POINTS.per_layer["ln2.hook_normalized"] = _attach_ln2
    with pytest.raises(dataclasses.FrozenInstanceError):
        H.HOOK_POINTS.per_layer = {}
    extra = H.HOOK_POINTS.with_point("ln2.hook_normalized", _attach_ln2)
    assert isinstance(extra, HookRegistry) and "ln2.hook_normalized" in extra.sites
    assert (H.HOOK_POINTS, H.PER_LAYER, H.GLOBAL) == before and "ln2.hook_normalized" not in H.PER_LAYER
    with pytest.raises(ConfigError, match="exists already"):
        extra.with_point("hook_resid_pre", _attach_ln2)
    name = "blocks.1.ln2.hook_normalized"
    with pytest.raises(ConfigError, match="unknown hook name"):
        mech.run_with_cache(m, inputs, [name])  # the built-in table does not know it
    assert name in H.valid_names(m, extra) and name not in H.valid_names(m)

    seen = {}
    handle = m.arch.module(m.model, "ln2", 1).register_forward_hook(
        lambda mod, args, out: seen.setdefault("x", out.detach().clone())
    )
    try:
        logits, cache = mech.run_with_cache(m, inputs, [name, "blocks.1.hook_resid_mid"], points=extra)
    finally:
        handle.remove()
    torch.testing.assert_close(cache[name], seen["x"], rtol=0, atol=0)
    zeroed = mech.run_with_hooks(m, inputs, [(name, lambda x, hook: torch.zeros_like(x))], points=extra)
    plain = mech.run_with_hooks(m, inputs)
    torch.testing.assert_close(plain, logits, rtol=0, atol=0)
    assert not torch.allclose(zeroed, plain)
    assert not m.arch.module(m.model, "ln2", 1)._forward_hooks  # nothing stays registered
    with pytest.raises(ConfigError, match="HookRegistry"):
        mech.run_with_cache(m, inputs, [name], points={"ln2.hook_normalized": _attach_ln2})
