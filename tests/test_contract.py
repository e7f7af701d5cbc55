"""The result contract (mech.contract, issue 25 item 1): axes declared once and checked, ``concat`` of
parts equal to the measurement on the union (the oracle: one run on every row at once), lossless
``save``/``load`` and ``to_record``/``from_record``, frozen results, one PatchingResult for both methods."""

import dataclasses
import warnings

import pytest
import torch

import mech
from mech.conditions import condition_inputs
from mech.contract import Result
from mech.curves import Contributions
from mech.errors import ConfigError, InputError, MechError
from mech.measure.knockout import KnockoutResult, attention_knockout
from mech.measure.patching import PatchingResult, activation_patching
from mech.measure.patching.attribution import AtPResult, attribution_patching
from mech.prepare.data import load_data
from mech.testing.tolerance import assert_close_scaled, probability_rel_bound


@pytest.fixture(scope="module")
def organism():
    """The balanced organism and six samples, clean and white-image inputs of all six and of two parts."""
    m = mech.load("organism:balanced")
    samples = list(load_data("organism:shapes", n=6))
    parts = [samples[:2], samples[2:]]
    run = {"all": samples, "a": parts[0], "b": parts[1]}
    inputs = {
        k: (condition_inputs(m, v, "complete"), condition_inputs(m, v, "white_image")) for k, v in run.items()
    }
    return m, inputs


def _terms(m, inputs) -> int:
    """Reduction length along a forward (mech.testing.tolerance): ``n_layers · (d_model + pos)``."""
    return m.arch.n_layers * (m.arch.d_model + inputs["input_ids"].shape[1])


def test_patching_concat_of_parts_equals_the_union(organism):
    m, inputs = organism
    kw = dict(sites=["resid_post", "attn_out"], positions=("image", "text", "last"))
    union = activation_patching(m, *inputs["all"], **kw)
    parts = [
        activation_patching(m, *inputs[k], **kw, answer=a, counterfactual=c)
        for k, a, c in (
            ("a", union.answer[:2], union.counterfactual[:2]),
            ("b", union.answer[2:], union.counterfactual[2:]),
        )
    ]
    cat = PatchingResult.concat(parts)
    n = _terms(m, inputs["all"][0])
    for name in ("clean_metric", "corrupted_metric"):
        assert_close_scaled(getattr(cat, name), getattr(union, name), n=n, msg=name)
    for site in kw["sites"]:
        assert cat.patched[site].shape == union.patched[site].shape == (m.arch.n_layers, 3, 6)
        assert_close_scaled(cat.patched[site], union.patched[site], n=n, msg=f"patched.{site}")
        # the effect is recomputed from the union's batch means, not averaged over the parts' effects
        scale = float((union.clean_metric.mean() - union.corrupted_metric.mean()).abs())
        bound = float(union.patched[site].abs().max()) / scale
        assert_close_scaled(cat.effect[site], union.effect[site], n=n, scale=4 * bound, msg=f"effect.{site}")
    assert torch.equal(cat.answer, union.answer) and torch.equal(cat.counterfactual, union.counterfactual)
    assert cat.patched_positions == union.patched_positions  # per row, in order
    assert cat.n_patched_runs == sum(p.n_patched_runs for p in parts)
    assert (cat.groups, cat.layers, cat.method) == (union.groups, union.layers, "exact")


def test_knockout_concat_of_parts_equals_the_union(organism):
    m, inputs = organism
    kw = dict(edges=[("image", "last"), ("text", "last")], window=3)
    union = attention_knockout(m, inputs["all"][0], **kw)
    parts = [attention_knockout(m, inputs[k][0], **kw) for k in ("a", "b")]
    cat = KnockoutResult.concat(parts)
    rel = probability_rel_bound(m, inputs["all"][0])
    torch.testing.assert_close(cat.p_clean, union.p_clean, rtol=rel, atol=0)
    torch.testing.assert_close(cat.p_knocked, union.p_knocked, rtol=rel, atol=0)
    # the percent change of the mean over samples, from per-sample changes each within 2·rel·100·(1 + |change|/100)
    bound = 2 * rel * (100 + float(union.change_per_sample.abs().max()))
    torch.testing.assert_close(cat.change, union.change, rtol=0, atol=bound)
    assert torch.equal(cat.answer, union.answer) and torch.equal(cat.kept, union.kept)
    assert cat.windows == union.windows and cat.edges == union.edges


def test_save_load_and_record_round_trips(organism, tmp_path):
    m, inputs = organism
    results = [
        activation_patching(m, *inputs["a"], sites=["resid_post", "z"], positions=("image", "last")),
        attribution_patching(m, *inputs["a"], sites=["resid_pre", "z"], positions=("image", "last")),
        attention_knockout(m, inputs["a"][0], edges=[("image", "last")], window=3),
        Contributions(
            {"attention": torch.rand(2, 3, 6)},
            meta={"corruption": None},
            components={"decision": torch.rand(2), "decomposition.embed": torch.rand(2, 6)},
        ),
    ]
    for k, r in enumerate(results):
        path = r.save(tmp_path / f"{k}.safetensors")
        back = type(r).load(path)
        assert back == r and back is not r, type(r).__name__
        assert type(r).from_record(r.to_record()) == r
        # equality is not vacuous: one changed number breaks it
        name, t = next(iter(r.tensors().items()))
        other = {**r.tensors(), name: t + 1 if t.dtype != torch.bool else ~t}
        assert type(r).from_parts(other, r.parts()[1]) != r
    with pytest.raises(InputError, match="not written by KnockoutResult"):
        KnockoutResult.load(tmp_path / "0.safetensors")


def _patching(**changes) -> PatchingResult:
    fields = dict(
        effect={"resid_post": torch.zeros(2, 3)},
        patched={"resid_post": torch.zeros(2, 3, 4)},
        clean_metric=torch.ones(4),
        corrupted_metric=torch.zeros(4),
        groups=("image", "text", "last"),
        layers=[0, 1],
        direction="denoising",
        metric="logit_diff",
        corruption="white_image",
        align="strict",
        patched_positions={},
        forward_equivalents=0.5,
        n_patched_runs=6,
    )
    return PatchingResult(**{**fields, **changes})


def test_axes_are_declared_once_and_checked():
    assert PatchingResult.AXES["patched"] == ("layer", "head?", "group", "batch")
    ok = _patching()
    assert ok.effect["resid_post"].shape == (2, 3)
    with pytest.raises(
        InputError, match=r"clean_metric has shape \(5,\) with axes \('batch',\).*'batch' is 5 long, but 4"
    ):
        _patching(clean_metric=torch.ones(5))
    with pytest.raises(
        InputError,
        match=r"effect.resid_post has shape \(2,\), but its declared axes are "
        r"\('layer', 'head\?', 'group'\)",
    ):
        _patching(effect={"resid_post": torch.zeros(2)})
    with pytest.raises(InputError, match=r"axis 'layer' is 2 long, but layers has 3 labels"):
        _patching(layers=[0, 1, 2])
    with pytest.raises(InputError, match="group"):
        _patching(groups=("image", "text"))
    with pytest.raises(MechError, match="not a tensor"):
        _patching(patched={"resid_post": [[0.0]]})
    # every tensor field has a tidy frame from its declared axes, labelled by LABELS
    f = _patching(patched={"resid_post": torch.arange(24.0).view(2, 3, 4)}).frame("patched")
    assert list(f.columns) == ["key", "layer", "group", "batch", "patched"] and len(f) == 24
    row = f[(f["layer"] == 1) & (f["group"] == "last") & (f["batch"] == 3)]
    assert float(row["patched"].iloc[0]) == 23.0  # [1, 2, 3] in C order
    # a head axis is optional (site z): [layer, head, group] and [layer, head, group, batch]
    z = _patching(effect={"z": torch.zeros(2, 5, 3)}, patched={"z": torch.zeros(2, 5, 3, 4)})
    assert z.to_frame()["head"].nunique() == 5


def test_results_are_frozen():
    r = _patching(meta={"note": "x"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.method = "atp"
    with pytest.raises(TypeError):
        r.meta["note"] = "y"
    with pytest.raises(TypeError):
        r.effect["resid_post"] = torch.ones(2, 3)
    for cls in (PatchingResult, KnockoutResult, Contributions):
        assert issubclass(cls, Result) and cls.__dataclass_params__.frozen


def test_concat_refuses_parts_of_different_measurements():
    with pytest.raises(ConfigError, match="differ in direction"):
        PatchingResult.concat([_patching(), _patching(direction="noising")])
    with pytest.raises(ConfigError, match="no parts"):
        PatchingResult.concat([])
    cat = PatchingResult.concat([_patching(), _patching(forward_equivalents=1.5)])
    assert cat.forward_equivalents == 1.0 and cat.n_patched_runs == 12 and cat.clean_metric.shape == (8,)


def test_one_patching_result_for_exact_and_attribution(organism):
    m, inputs = organism
    atp = attribution_patching(m, *inputs["a"], sites="resid_post", positions=("image", "last"))
    assert type(atp) is PatchingResult and atp.method == "atp" and atp.delta is not None
    j = atp.to_json()
    assert j["method"] == "attribution patching (AtP)" and j["forward_equivalents"] == 3.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = AtPResult(
            atp.effect,
            atp.patched,
            atp.delta,
            atp.clean_metric,
            atp.corrupted_metric,
            atp.groups,
            atp.layers,
            "denoising",
            "logit_diff",
            atp.corruption,
            3.0,
            {"align": atp.align},
        )
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert isinstance(old, PatchingResult) and old.method == "atp"
    torch.testing.assert_close(old.patched["resid_post"], atp.patched["resid_post"], rtol=0, atol=0)


def test_patch_parts_of_an_older_format_name_the_fix(tmp_path):
    """A run resumed across the upgrade finds batches without the contract's fields: a DataError names the fix."""
    from mech.errors import DataError
    from mech.measure.patching.job import PatchJob
    from mech.results import BatchStore
    from mech.runs.settings import PatchSettings

    store = BatchStore(tmp_path / ".patch.parts", {"command": "patch"})
    old = {
        "groups": ["image"],
        "layers": [0],
        "metric": "logit_diff",
        "align": "strict",
    }  # the old job's metadata
    store.put(0, {"clean_metric": torch.zeros(2), "n_pairs": torch.ones(2, 1).long()}, old)
    with pytest.raises(DataError, match=r"older format.*delete that folder and rerun"):
        PatchJob(PatchSettings(model="organism:balanced", data="organism:shapes")).assemble(
            store, [], tmp_path
        )


def test_contribution_figures_take_the_result_object():
    """A figure plots a Contributions directly: the same lines as from its contrib.json content."""
    import numpy as np

    from mech.figures import compare_figure, contribution_figure
    from mech.prepare.groups import GROUPS

    g = torch.Generator().manual_seed(0)
    c = Contributions({"attention": torch.rand(8, 3, len(GROUPS), generator=g)})

    def lines(fig):
        return [np.asarray(ln.get_ydata(), dtype=float) for ax in fig.axes for ln in ax.get_lines()]

    for typed, plain in (
        (contribution_figure(c, "t"), contribution_figure(c.to_json(), "t")),
        (compare_figure({"a": c}), compare_figure({"a": c.to_json()})),
    ):
        a, b = lines(typed), lines(plain)
        assert len(a) == len(b) > 0 and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))
