"""Every result's ``.to_frame()`` (issue 16, item 4): one row per cell of its tensor, named columns in
the documented order, categorical names and int64 indices, and values that scatter back into the
result's own tensor exactly.

Oracle: :func:`_scatter` puts every row's value back at the tensor index its label columns name
(labels looked up in the result's own label lists, not in the frame's row order), and checks that
every cell is hit exactly once; the rebuilt array must equal the tensor bit for bit (NaN where NaN).
Group-bys and a few hand-picked cells check the frames as a user reads them.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mech
from mech.curves import modality_contributions
from mech.frames import concat, tidy
from mech.measure.dla import direct_logit_attribution
from mech.measure.evaluation import evaluate, to_frame
from mech.measure.knockout import attention_knockout
from mech.measure.patching import activation_patching  # before knockout: see the report on engines.prefix
from mech.measure.patching.attribution import attribution_patching
from mech.measure.probing import linear_probe
from mech.testing.tiny import IMAGE_SIZES, tiny_inputs, tiny_model

PROMPTS = ["what colour is the shape ?", "please what colour is the shape on the left ?"]


@pytest.fixture(scope="module")
def m():
    return mech.load(tiny_model("llava"))


@pytest.fixture(scope="module")
def inputs(m):
    return m.inputs(tiny_inputs("llava", m.processor, batch=2))


@pytest.fixture(scope="module")
def pair(m):
    """Clean and white-image inputs of the same two samples."""
    size = IMAGE_SIZES["llava"]
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in PROMPTS]
    white = [Image.new("RGB", size, (255, 255, 255)) for _ in PROMPTS]
    return m.inputs(m.prepare(imgs, PROMPTS)), m.inputs(m.prepare(white, PROMPTS))


def _scatter(frame: pd.DataFrame, axes: dict[str, list], value: str) -> np.ndarray:
    """The tensor rebuilt from ``frame``: each row's ``value`` at the index of its labels in ``axes``
    (column -> the result's labels along that axis, in axis order); every cell exactly once."""
    shape = tuple(len(v) for v in axes.values())
    out = np.full(shape, np.nan)
    hits = np.zeros(shape, dtype=np.int64)
    lookup = [{lab: i for i, lab in enumerate(labels)} for labels in axes.values()]
    cols = [frame[c].tolist() for c in axes]
    for r, v in enumerate(frame[value].to_numpy(dtype=np.float64)):
        idx = tuple(lk[col[r]] for lk, col in zip(lookup, cols))
        out[idx] = v
        hits[idx] += 1
    assert (hits == 1).all(), f"{value}: cells hit {np.unique(hits)} times"
    return out


def _same(a, b) -> None:
    a = np.asarray(a, dtype=np.float64)
    b = b.double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float64)
    np.testing.assert_array_equal(a, b)  # exact; NaN equals NaN


def _kinds(frame: pd.DataFrame, ints=(), cats=()) -> None:
    for c in ints:
        assert frame[c].dtype == np.int64, (c, frame[c].dtype)
    for c in cats:
        assert isinstance(frame[c].dtype, pd.CategoricalDtype), (c, frame[c].dtype)


def test_tidy_axes_order_dtypes_and_errors():
    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    f = tidy(t, {"a": None, "b": ["x", "y", "z"], "c": [10, 20, 30, 40]}, value="v")
    assert list(f.columns) == ["a", "b", "c", "v"] and len(f) == 24
    _kinds(f, ints=("a", "c"), cats=("b",))
    assert list(f["b"].cat.categories) == ["x", "y", "z"] and f["v"].dtype == np.float32
    assert f.iloc[0].tolist() == [0, "x", 10, 0.0] and f.iloc[-1].tolist() == [1, "z", 40, 23.0]  # C order
    assert f.loc[(f.a == 1) & (f.b == "y") & (f.c == 30), "v"].item() == t[1, 1, 2]
    two = tidy(
        {"v": t, "w": t[:, :1, :1] * 0 + 7}, {"a": None, "b": {"b": None, "name": list("pqr")}, "c": None}
    )
    assert list(two.columns) == ["a", "b", "name", "c", "v", "w"] and (two.w == 7).all()
    assert two.groupby("name", observed=True).v.sum().tolist() == t.sum((0, 2)).tolist()
    with pytest.raises(ValueError, match="dimensions"):
        tidy(t, {"a": None, "b": None})
    with pytest.raises(ValueError, match="labels"):
        tidy(t, {"a": None, "b": ["x", "y"], "c": None})
    both = concat({"p": tidy(t[0], {"b": None, "c": None}), "q": tidy(t[1], {"b": None, "c": None})}, "part")
    assert list(both.columns) == ["part", "b", "c", "value"] and list(both.part.cat.categories) == ["p", "q"]
    _same(both.value.to_numpy().reshape(2, 3, 4), t)


def test_attention_mass_frame(m, inputs):
    am = mech.attention_mass(m, inputs, query="last")
    f = am.to_frame()
    B, L, H, G = am.mass.shape
    assert (
        list(f.columns) == ["sample", "layer", "head", "group", "mass", "density"] and len(f) == B * L * H * G
    )
    _kinds(f, ints=("sample", "layer", "head"), cats=("group",))
    axes = {
        "sample": list(range(B)),
        "layer": list(range(L)),
        "head": list(range(H)),
        "group": list(am.groups),
    }
    _same(_scatter(f, axes, "mass"), am.mass)
    _same(_scatter(f, axes, "density"), am.density)
    by = f.groupby(["layer", "group"], observed=True).mass.mean()
    want = am.mass.double().mean((0, 2))
    for (layer, group), v in by.items():
        assert v == pytest.approx(float(want[layer, am.groups.index(group)]), abs=1e-6)
    cell = f[(f["sample"] == 1) & (f.layer == L - 1) & (f["head"] == 2) & (f.group == "text")]
    assert cell.mass.item() == am.mass[1, L - 1, 2, am.groups.index("text")].item()
    assert f.groupby(["sample", "layer", "head"]).mass.sum().to_numpy() == pytest.approx(1.0, abs=1e-5)


def _check_patching(res, f_eff, f_per, values):
    sites = list(res.effect)
    heads = res.effect["z"].shape[1] if "z" in res.effect else 0
    assert list(f_eff.columns) == ["site", "layer", "head", "group", "effect"]
    assert list(f_per.columns) == [
        "site",
        "sample",
        "layer",
        "head",
        "group",
        *values,
        "clean_metric",
        "corrupted_metric",
    ]
    assert len(f_eff) == sum(e.numel() for e in res.effect.values())
    assert len(f_per) == sum(p.numel() for p in res.patched.values())
    for f in (f_eff, f_per):
        _kinds(f, ints=("layer",), cats=("site", "group"))
        assert list(f.site.cat.categories) == sites and f["head"].dtype == "Int64"
    _kinds(f_per, ints=("sample",))
    batch = len(res.clean_metric)
    for s in sites:
        e, p = f_eff[f_eff.site == s], f_per[f_per.site == s]
        axes = {"layer": list(res.layers), "group": list(res.groups)}
        if s == "z":
            axes = {"layer": list(res.layers), "head": list(range(heads)), "group": list(res.groups)}
            assert e["head"].notna().all()
        else:
            assert e["head"].isna().all() and p["head"].isna().all()
        _same(_scatter(e, axes, "effect"), res.effect[s])
        per_axes = {**axes, "sample": list(range(batch))}
        _same(_scatter(p, per_axes, "patched"), res.patched[s])
        if "delta" in values:
            _same(_scatter(p, per_axes, "delta"), res.delta[s])
        for k in ("clean_metric", "corrupted_metric"):
            _same(p.groupby("sample")[k].agg(["min", "max"]).to_numpy().T, getattr(res, k).expand(2, batch))


def test_patching_frame(m, pair):
    clean, corrupted = pair
    res = activation_patching(
        m, clean, corrupted, sites=["resid_post", "z"], positions=("image", "text", "last"), layers=[1]
    )
    f_eff, f_per = res.to_frame(), res.to_frame(per_sample=True)
    _check_patching(res, f_eff, f_per, ["patched"])
    assert set(f_eff.layer) == {1}  # the layer index, not the position in result.layers
    cell = f_eff[(f_eff.site == "resid_post") & (f_eff.group == "text")]
    assert cell.effect.item() == res.effect["resid_post"][0, res.groups.index("text")].item()
    z = f_per[(f_per.site == "z") & (f_per["sample"] == 1) & (f_per["head"] == 3) & (f_per.group == "last")]
    assert z.patched.item() == res.patched["z"][0, 3, res.groups.index("last"), 1].item()


def test_attribution_frame(m, pair):
    clean, corrupted = pair
    res = attribution_patching(m, clean, corrupted, sites=("resid_pre", "z"), positions=("image", "text"))
    f_eff, f_per = res.to_frame(), res.to_frame(per_sample=True)
    _check_patching(res, f_eff, f_per, ["patched", "delta"])
    g = res.groups.index("image")
    cell = f_per[
        (f_per.site == "resid_pre") & (f_per["sample"] == 0) & (f_per.layer == 1) & (f_per.group == "image")
    ]
    assert cell.delta.item() == res.delta["resid_pre"][1, g, 0].item()
    target = res.corrupted_metric.numpy()[
        f_per["sample"].to_numpy()
    ]  # patched = target (corrupted) metric + ΔM
    assert (f_per.patched - f_per.delta).to_numpy() == pytest.approx(target, abs=1e-5)


def test_knockout_frame(m, inputs):
    edges = [("image", "last"), ("text", "last"), [("image", "last"), ("bos", "last")]]
    res = attention_knockout(m, inputs, edges=edges, window=2, anchor="center")
    f, per = res.to_frame(), res.to_frame(per_sample=True)
    W, E, B = res.p_knocked.shape
    assert list(f.columns) == ["layer", "first", "stop", "edge", "change"] and len(f) == W * E
    assert (
        list(per.columns)
        == [
            "sample",
            "layer",
            "first",
            "stop",
            "edge",
            "change",
            "p_knocked",
            "p_clean",
            "n_source",
            "n_target",
        ]
        and len(per) == W * E * B
    )
    _kinds(f, ints=("layer", "first", "stop"), cats=("edge",))
    _kinds(per, ints=("sample", "layer", "first", "stop", "n_source", "n_target"), cats=("edge",))
    assert list(f.edge.cat.categories) == res.edges == ["image->last", "text->last", "image->last+bos->last"]
    _same(_scatter(f, {"layer": res.layers, "edge": res.edges}, "change"), res.change)
    axes = {"layer": res.layers, "edge": res.edges, "sample": list(range(B))}
    _same(_scatter(per, axes, "change"), res.change_per_sample)
    _same(_scatter(per, axes, "p_knocked"), res.p_knocked)
    _same(_scatter(per, axes, "n_source"), res.n_source[None].expand(W, E, B))
    assert per.groupby("sample").p_clean.first().tolist() == res.p_clean.tolist()
    for w, (lo, hi) in enumerate(res.windows):
        rows = f[f.layer == res.layers[w]]
        assert (rows["first"] == lo).all() and (rows["stop"] == hi).all()
    means = per.groupby(["layer", "edge"], observed=True).change.mean()
    assert means.to_numpy() == pytest.approx(res.change.flatten().double().numpy(), abs=1e-4)


def test_dla_frame(m, inputs):
    a = torch.tensor([5, 9])
    d = direct_logit_attribution(m, inputs, a, (a + 1) % m.arch.vocab_size)
    f = d.to_frame()
    B, L, G = d.attn.shape
    assert list(f.columns) == ["sample", "layer", "group", "attn"] and len(f) == B * L * G
    _kinds(f, ints=("sample", "layer"), cats=("group",))
    _same(
        _scatter(f, {"sample": list(range(B)), "layer": list(range(L)), "group": list(d.groups)}, "attn"),
        d.attn,
    )
    c = d.to_frame(components=True)
    assert list(c.columns) == ["sample", "component", "layer", "group", "logits"]
    assert len(c) == B * (L * G + 2 * L + 2) and c["layer"].dtype == "Int64"
    assert list(c.component.cat.categories) == ["attn", "attn_bias", "mlp", "embed", "unembed_bias"]
    assert c.groupby("sample").logits.sum().to_numpy() == pytest.approx(d.total().double().numpy(), abs=1e-4)
    mlp = c[c.component == "mlp"]
    assert mlp.group.isna().all() and mlp.layer.tolist() == list(range(L)) * B
    _same(_scatter(mlp, {"sample": list(range(B)), "layer": list(range(L))}, "logits"), d.mlp)
    emb = c[c.component == "embed"]
    assert emb.layer.isna().all() and emb.logits.tolist() == d.embed.tolist()


def test_contributions_frame(m):
    size = IMAGE_SIZES["llava"]
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(3)]
    inputs = m.inputs(
        m.prepare(
            imgs, ["what colour is the shape ?", "what size is the shape ?", "what colour is the circle ?"]
        )
    )  # equal group sizes: every row has donors
    a = torch.tensor([5, 9, 11])
    res = modality_contributions(m, inputs, a, (a + 1) % m.arch.vocab_size)
    f = res.to_frame()
    ests = list(res.per_sample)
    assert ests == ["attention", "patching", "dla", "decomposition"]
    assert list(f.columns) == ["estimator", "sample", "layer", "group", "contribution"]
    assert len(f) == sum(x.numel() for x in res.per_sample.values())
    _kinds(f, ints=("sample", "layer"), cats=("estimator", "group"))
    for e, x in res.per_sample.items():
        B, L, G = x.shape
        axes = {"sample": list(range(B)), "layer": list(range(L)), "group": list(res.groups)}
        _same(_scatter(f[f.estimator == e], axes, "contribution"), x)
    curves = res.to_frame(per_sample=False)
    assert list(curves.columns) == ["estimator", "layer", "group", "contribution"]
    got = curves[(curves.estimator == "dla") & (curves.group == "text")].contribution.to_numpy()
    assert got == pytest.approx(res.to_json(n_boot=10)["curves"]["dla"]["text"])
    assert curves[(curves.estimator == "patching") & (curves.group == "bos")].contribution.isna().all()
    r = res.imbalance_frame(n_boot=10)
    assert list(r.columns) == ["estimator", "layer", "delta"] and len(r) == len(ests) * m.arch.n_layers
    for e in ests:
        _same(r[r.estimator == e].delta.to_numpy(), res.imbalance(e, n_boot=10).per_layer)


def test_probe_frame(m):
    rng = np.random.default_rng(0)
    samples = [
        {
            "image": Image.fromarray(
                np.clip((200 if i % 2 else 40) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype("uint8")
            ),
            "bright": bool(i % 2),
        }
        for i in range(12)
    ]

    def prep(batch):
        return m.prepare([s["image"] for s in batch], ["what colour is the shape ?"] * len(batch))

    res = linear_probe(m, samples, lambda s: s["bright"], prepare=prep, steps=5)
    f = res.to_frame()
    assert list(f.columns) == ["layer", "readout", "accuracy"] and len(f) == res.accuracy.numel()
    _kinds(f, ints=("layer",), cats=("readout",))
    _same(
        _scatter(f, {"layer": list(range(m.arch.n_layers)), "readout": list(res.readouts)}, "accuracy"),
        res.accuracy,
    )


def test_evaluation_frame(m):
    imgs = [
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8))
        for k in range(3)
    ]
    samples = [
        {
            "id": f"q{i}",
            "question": "what colour is the shape ?",
            "images": [imgs[i]],
            "options": ["red", "blue", "green", "yellow"][: 2 + i],
            "answer": "AB"[i % 2],
            "prompt_style": "direct",
        }
        for i in range(3)
    ]
    conds = ["complete", "white_image", "no_image"]
    r = evaluate(m, samples, conditions=conds, progress=False)
    f = to_frame(r)
    assert list(f.columns) == ["sample", "id", "condition", "prediction", "correct", "answer", "n_options"]
    assert len(f) == 3 * len(conds)
    _kinds(f, ints=("sample", "n_options"), cats=("id", "condition"))
    assert f.correct.dtype == bool and list(f.condition.cat.categories) == conds
    for c in conds:
        rows = f[f.condition == c].sort_values("sample")
        assert rows.prediction.tolist() == r["predictions"][c] and rows.correct.tolist() == r["correct"][c]
        assert rows.id.tolist() == r["ids"] and rows.answer.tolist() == ["A", "B", "A"]
    assert f.groupby("condition", observed=True).correct.mean().to_dict() == pytest.approx(
        {c: r["conditions"][c]["accuracy"] for c in conds}
    )
    assert f[f.id == "q2"].n_options.unique().tolist() == [4]
    assert f.iloc[1][["sample", "condition"]].tolist() == [0, "white_image"]  # sample-major
    assert set(r) >= {"conditions", "consistency", "ids", "predictions", "correct", "answers", "n_options"}


def test_importing_mech_does_not_import_pandas():
    code = (
        "import sys, mech, mech.frames, mech.curves, mech.measure.dla, mech.measure.probing, "
        "mech.measure.patching.attribution, mech.measure.knockout, mech.measure.evaluation; "
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
