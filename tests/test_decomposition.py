"""The ``decomposition`` estimator (issue 18): the decision's logit difference split exactly over
``[sample, layer, component, modality]`` by the Shapley value of removing each modality.

Oracles: the model's own logits (the clean run's components sum to the logit difference), hand-written
forward hooks on the attention / MLP modules and the last decoder layer (each component's write and the
frozen readout of the final residual in the removed runs), plain forwards on hand-mixed samples (the
two-group removal), Shapley's axioms on hand-built games, and per-question-type counts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math

import pytest
import torch

import mech
from mech.curves.decomposition import (
    TOLERANCE,
    decompose,
    noise_removals,
    resample_removals,
    shapley,
    shapley_weights,
)
from mech.curves.donors import batch_donors
from mech.engines.hooks import find_hidden
from mech.errors import UnsupportedArchitectureError
from mech.testing.tiny import FAMILIES, tiny_inputs, tiny_model


def _ids(m, batch):
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, m.arch.vocab_size, (batch,), generator=gen)
    return a, (a + 1) % m.arch.vocab_size


def _modality(m, inputs) -> str:
    return next(g for g in ("image", "video", "audio") if bool(inputs.groups.mask(g).any()))


def _removals(m, inputs):
    """The media group resampled from the other row (equal counts in the tiny zoo), the text noised
    (its rows differ in length, so no resample donor): both kinds of removal in one game."""
    media = _modality(m, inputs)
    out = resample_removals(m, inputs, (media,), {media: batch_donors(inputs, media, seed=0)})
    out.update(noise_removals(m, inputs, ("text",), seed=0))
    return out


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "mllama"])
def test_completeness_on_every_family(family):
    """Σ φ = LD(clean) − LD_frozen(all removed) per sample, and LD(clean) is the model's own logit
    difference (from its logits, not from the hooks)."""
    m = mech.load(tiny_model(family))
    inputs = m.inputs(tiny_inputs(family, m.processor, batch=2))
    a, b = _ids(m, 2)
    # deepstack (qwen3_vl): the image also enters after early layers; resample ablation swaps that copy too
    rem = _removals(m, inputs)
    assert all(bool(r.rows.all()) for r in rem.values()), "the tiny rows must have donors"
    d = decompose(m, inputs, a, b, rem)
    assert d.attn.shape == (2, m.arch.n_layers, len(rem)) and d.mlp.shape == d.attn.shape
    c = d.completeness()
    assert c["relative"] <= TOLERANCE, c
    torch.testing.assert_close(d.total().sum(-1), d.decision - d.rest, atol=1e-4, rtol=0)
    logits = m.logits(inputs)
    q, r = inputs.groups.last(), torch.arange(2)
    torch.testing.assert_close(d.decision, (logits[r, q, a] - logits[r, q, b]).float(), atol=1e-4, rtol=0)
    assert torch.isfinite(d.attn).all()
    # a donor identical to the row (tiny gemma3's vision tower maps both images alike) changes nothing
    assert (d.total()[d.same] == 0).all()


def test_cross_attention_family_is_refused():
    m = mech.load(tiny_model("mllama"))
    inputs = m.inputs(tiny_inputs("mllama", m.processor))
    with pytest.raises(UnsupportedArchitectureError):
        decompose(m, inputs, torch.tensor([1]), torch.tensor([2]), {"text": None})


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_component_writes_and_final_residual_match_hand_written_hooks(family):
    """One player (text, noised): φ_c = v_c(clean) − v_c(text removed). Hand oracle: forward hooks on each
    layer's attention module (through Gemma 3's post-attention norm), on each MLP's residual write
    (layer output − layer input − attention write), and on the last decoder layer's output, read through
    ln_final(x)/x of the clean run (hand-computed) onto W_U[a] − W_U[b]."""
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    inputs = m.inputs(tiny_inputs(family, proc, batch=2))
    a, b = _ids(m, 2)
    # the question noised: always a change (tiny gemma3's answer position does not see its image tokens)
    rem = noise_removals(m, inputs, ("text",), seed=0)
    d = decompose(m, inputs, a, b, rem)
    assert float(d.total().abs().min()) > 1e-4  # the removal matters, so the comparison below is not 0 == 0
    q, r = inputs.groups.last(), torch.arange(2)
    L = m.arch.n_layers

    def run(removed: bool):
        got = {}
        handles = []
        for l in range(L):
            layer = m.arch.module(model, "layer", l)
            post = m.arch.module(model, "attn_post_norm", l)
            attn_mod = post if post is not None else m.arch.module(model, "attn", l)
            handles.append(
                attn_mod.register_forward_hook(
                    lambda mod, i, o, l=l: got.__setitem__(
                        ("attn", l), (o[0] if isinstance(o, tuple) else o)[r, q]
                    )
                )
            )
            handles.append(
                layer.register_forward_pre_hook(
                    lambda mod, args, kw, l=l: got.__setitem__(("in", l), find_hidden(args, kw)[1][r, q]),
                    with_kwargs=True,
                )
            )
            handles.append(
                layer.register_forward_hook(
                    lambda mod, i, o, l=l: got.__setitem__(
                        ("out", l), (o[0] if isinstance(o, tuple) else o)[r, q]
                    )
                )
            )
        try:
            with torch.no_grad(), rem["text"].applied(m, inputs) if removed else contextlib.nullcontext():
                model(**inputs)
        finally:
            for h in handles:
                h.remove()
        return got

    clean, gone = run(False), run(True)
    x = clean[("out", L - 1)].float()
    scale = m.arch.module(model, "ln_final")(x.unsqueeze(1)).squeeze(1).float() / x
    w_u = m.arch.module(model, "unembed").weight.float()
    direction = w_u[a] - w_u[b]

    def logits(w):
        return (w.float() * scale * direction).sum(-1)

    for l in range(L):

        def mlp(g):
            return g[("out", l)] - g[("in", l)] - g[("attn", l)]

        torch.testing.assert_close(
            d.attn[:, l, 0], logits(clean[("attn", l)]) - logits(gone[("attn", l)]), atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            d.mlp[:, l, 0], logits(mlp(clean)) - logits(mlp(gone)), atol=1e-4, rtol=1e-4
        )
    assert (
        getattr(m.arch.module(model, "unembed"), "bias", None) is None
    )  # no unembedding bias in these families
    torch.testing.assert_close(d.rest, logits(gone[("out", L - 1)]), atol=1e-4, rtol=1e-4)
    # the embedding's share: the decoder input at the answer position (changed where it is a text token)
    torch.testing.assert_close(
        d.embed[:, 0], logits(clean[("in", 0)]) - logits(gone[("in", 0)]), atol=1e-5, rtol=1e-4
    )


def test_a_removal_that_changes_nothing_gets_zero_and_is_flagged():
    """Every row its own donor: the removal changes no input, so every φ is exactly 0 and ``same`` is set."""
    m = mech.load(tiny_model("llava"))
    inputs = m.inputs(tiny_inputs("llava", m.processor, batch=2))
    a, b = _ids(m, 2)
    itself = (torch.arange(2), torch.ones(2, dtype=torch.bool))
    rem = resample_removals(m, inputs, ("image", "text"), {"image": itself, "text": itself})
    assert all(bool(r.same.all()) for r in rem.values())
    d = decompose(m, inputs, a, b, rem)
    assert float(d.total().abs().max()) == 0.0 and float(d.interaction.abs().max()) == 0.0
    torch.testing.assert_close(d.rest, d.decision, atol=1e-5, rtol=0)


def test_shapley_axioms_on_hand_built_games():
    players = ("a", "b", "c")
    gen = torch.Generator().manual_seed(0)
    v = {
        frozenset(s): torch.randn(4, generator=gen)
        for k in range(4)
        for s in itertools.combinations(players, k)
    }
    phi = shapley(v, players)
    torch.testing.assert_close(phi.sum(-1), v[frozenset(players)] - v[frozenset()])  # efficiency
    # by hand, as the mean over the 3! orders of each player's marginal contribution
    want = torch.zeros(4, 3)
    for order in itertools.permutations(players):
        seen = frozenset()
        for p in order:
            want[:, players.index(p)] += (v[seen | {p}] - v[seen]) / 6
            seen = seen | {p}
    torch.testing.assert_close(phi, want)
    # symmetry: b and c interchangeable -> equal values; a dummy player (d) gets 0
    sym = {s: torch.tensor([float(len(s & {"b", "c"}) ** 2 + 3 * ("a" in s))]) for s in v}
    out = shapley(sym, players)
    assert out[0, 1] == out[0, 2] and out[0, 0] == pytest.approx(3.0)
    two = {
        frozenset(): torch.tensor([1.0]),
        frozenset("i"): torch.tensor([4.0]),
        frozenset("t"): torch.tensor([2.0]),
        frozenset("it"): torch.tensor([9.0]),
    }
    got = shapley(two, ("i", "t"))
    assert got[0].tolist() == pytest.approx(
        [0.5 * ((9 - 2) + (4 - 1)), 0.5 * ((9 - 4) + (2 - 1))]
    )  # the formula
    assert shapley_weights(3) == pytest.approx([1 / 3, 1 / 6, 1 / 3]) and math.isclose(
        sum(shapley_weights(1)), 1
    )


@pytest.fixture(scope="module")
def organism():
    from mech.organisms import organism_dir
    from mech.prepare.data import load_data

    try:
        organism_dir("text-biased")
    except mech.MechError:
        pytest.skip("organisms not built")
    return mech.load("organism:text-biased"), list(load_data("organism:shapes", n=48, seed=2))


def test_removing_both_groups_is_the_forward_of_the_hand_mixed_sample(organism):
    """The both-removed run (two nested removals) equals a plain forward on samples with the image of
    the image donor and the question of the text donor; one removal equals resample_features'."""
    from mech.conditions import condition_inputs, resample_features
    from mech.curves.donors import donor_batch, pair_donors

    m, samples = organism
    rows = list(range(12))
    pairs = {g: pair_donors(samples, g) for g in ("image", "text")}
    clean = condition_inputs(m, [samples[i] for i in rows], "complete")
    donors = {g: donor_batch(m, samples, pairs[g], rows, g, clean=clean)[:2] for g in pairs}
    rem = resample_removals(m, clean, ("image", "text"), donors, fit=True)
    with rem["image"].applied(m, clean), rem["text"].applied(m, clean):
        both = m.logits(clean)
    mixed = []
    for k, i in enumerate(rows):
        s = dict(samples[i])
        if donors["image"][1][k]:
            s["images"] = samples[pairs["image"][i]]["images"]
        if donors["text"][1][k]:  # one token per word: a donor of another length is repeated / truncated
            theirs = samples[pairs["text"][i]]["question"].split()
            s["question"] = " ".join(
                theirs[j % len(theirs)] for j in range(len(samples[i]["question"].split()))
            )
        mixed.append(s)
    torch.testing.assert_close(both, m.logits(condition_inputs(m, mixed, "complete")), atol=1e-5, rtol=0)
    with rem["text"].applied(m, clean):
        one = m.logits(clean)
    with resample_features(m, clean, donors["text"][0], groups=("text",), rows=donors["text"][1], fit=True):
        torch.testing.assert_close(one, m.logits(clean), atol=1e-6, rtol=0)
    # the flag: identical question words <=> same
    for k, i in enumerate(rows):
        if donors["text"][1][k]:
            assert bool(rem["text"].same[k]) == (
                samples[pairs["text"][i]]["question"] == samples[i]["question"]
            )


def test_organism_contrib_json_completeness_and_by_category(organism):
    from mech.curves import PATCHED_GROUPS, Contributions
    from mech.curves.donors import contributions_for_rows, pair_donors
    from mech.curves.summary import category_of

    m, samples = organism
    pairs = {g: pair_donors(samples, g) for g in PATCHED_GROUPS}
    parts = [
        contributions_for_rows(
            m, samples, range(i, min(i + 24, len(samples))), pairs, estimators=("dla", "decomposition")
        )[0]
        for i in (0, 24)
    ]
    c = Contributions.concat(parts)
    cats = [category_of(s) for s in samples]
    js = json.loads(json.dumps(c.to_json(n_boot=100, categories=cats)))
    dec = js["decomposition"]
    assert dec["completeness"]["ok"] and dec["completeness"]["relative"] <= TOLERANCE
    assert sum(dec["total"].values()) == pytest.approx(dec["decision"] - dec["rest"], abs=1e-4)
    # the model's decision (from its logits) is what the decomposition explains
    torch.testing.assert_close(
        c.components["decomposition.decision"], c.components["decision"], atol=1e-4, rtol=0
    )
    assert js["overall"]["decomposition"]["contribution"]["text"] == pytest.approx(
        dec["total"]["text"], abs=1e-6
    )
    for est in ("dla", "decomposition"):
        by = js["by_category"][est]
        assert set(by) == set(cats)
        assert sum(e["n"] for e in by.values()) == js["overall"][est]["n"]
        for e in by.values():
            assert {"contribution", "dominant", "underutilized", "delta", "ci95", "n", "decision"} <= set(e)
    # every count question has the same words: its text donor is another question (content-paired donors),
    # so the removal changes the input and the category is not blind
    count = js["by_category"]["decomposition"]["count"]
    assert (
        count["blind"] == []
        and count["identical_donor"]["text"] == 0.0
        and count["contribution"]["text"] != 0.0
    )
    assert "blind" not in js["by_category"]["dla"]["count"]
    for est in ("dla", "decomposition"):  # coverage: every sample estimated, nothing missing
        cov = js["overall"][est]["coverage"]
        assert cov == {"coverage": 1.0, "n_estimated": len(samples), "n": len(samples), "missing": []}


def test_report_words_for_three_models():
    """Three models: the side-by-side words order them per estimator, say which estimators agree, give
    the MLP share from the numbers, and flag a blind category instead of its Δ."""
    from mech.curves.record import ContribRecord
    from mech.report_words import agreement, category_table

    def co(deltas, mlp_text):  # a whole contrib.json (ContribRecord reads it): 3 estimators, 2 layers
        overall = {
            e: {
                "delta": d,
                "ci95": [d * 0.9, d * 1.1],
                "dominant": "text",
                "underutilized": "image",
                "contribution": {"text": d, "image": 1.0},
                "n": 10,
                "coverage": {"coverage": 1.0, "n_estimated": 10, "n": 10, "missing": []},
            }
            for e, d in deltas.items()
        }
        curves = {e: {"image": [0.5, 0.5], "text": [d / 2, d / 2]} for e, d in deltas.items()}
        entry = {
            "contribution": {"text": 0.0, "image": 2.0},
            "delta": 0.0,
            "ci95": [0.0, 0.0],
            "n": 4,
            "decision": 3.0,
            "dominant": "image",
            "underutilized": "text",
            "identical_donor": {"text": 1.0},
            "blind": ["text"],
        }
        content = {
            "groups": ["image", "text"],
            "pool": {e: "sum" for e in deltas},
            "ratio": "text/image",
            "curves": curves,
            "cumulative": curves,
            "imbalance_ratio": {e: [d, d] for e, d in deltas.items()},
            "overall": overall,
            "n": 10,
            "by_category": {"decomposition": {"count": entry}},
            "decomposition": {
                "players": ["image", "text"],
                "components": {c: {"image": [0.25, 0.25], "text": [0.25, 0.25]} for c in ("attn", "mlp")},
                "embed": {"image": 0.0, "text": 0.0},
                "total": {"text": 1.0, "image": 1.0},
                "mlp_share": {"text": mlp_text, "image": 0.1},
                "decision": 3.0,
                "rest": 1.0,
                "removed": 1.0,
                "interaction": 0.0,
                "completeness": {"max_abs": 1e-7, "relative": 1e-7, "tolerance": 1e-4, "ok": True},
                "n": 10,
            },
        }
        return {"contrib": ContribRecord.from_json(content)}

    results = {
        "b": co({"patching": 0.5, "dla": 0.4, "decomposition": 0.6}, 0.2),
        "t": co({"patching": 1.1, "dla": 0.1, "decomposition": 1.5}, 0.9),
        "i": co({"patching": 0.1, "dla": 0.2, "decomposition": 0.2}, 0.3),
    }
    text = "\n".join(agreement(results, list(results)))
    assert "patching and decomposition order Δ t > b > i" in text
    assert "dla orders Δ b > i > t" in text
    assert "90% of C(text)" in text and "`t` (90%)" in text
    table = "\n".join(category_table(results["t"]["contrib"]))
    assert "changes no input" in table and "Δ 0.00" not in table


def test_report_compares_three_models(tmp_path):
    """``mech report --compare A B C`` runs every step for three models and writes one side-by-side table
    with a column per model, the per-question-type tables and the decomposition's words."""
    import mech.cli
    from mech.testing.tiny import save_tiny

    dirs = [str(save_tiny("llava", tmp_path / f"m{k}", seed=k)) for k in range(3)]
    argv = [
        "report",
        "--compare",
        *dirs,
        "--data",
        "organism:shapes",
        "--n",
        "6",
        "--batch-size",
        "6",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert mech.cli.main(argv) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| estimator | m0"))
    assert "m1 Δ" in header and "m2 Δ" in header
    assert "| decomposition |" in text and "Per question type" in text and "Completeness:" in text
    compare = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert len(compare["overall"]) == 3 and all("decomposition" in o for o in compare["overall"].values())
    contrib = json.loads((tmp_path / "out" / "m0" / "contrib.json").read_text())
    assert set(contrib["by_category"]) == set(contrib["overall"])


def test_deepstack_keeps_the_clean_image_so_visual_feature_noise_is_refused():
    """Why qwen3_vl's noise corruption is refused: besides its input embeddings, its decoder receives a
    second copy of the image (deepstack features from the vision tower, added after early layers; seen
    here by a hand-written pre-hook), which an edit of the input embeddings leaves clean. Noise refuses,
    naming the input conditions that do remove the image; resample ablation swaps the deepstack features
    too (oracle: tests/test_heterogeneous_report.py, the forward of the hand-built sample with the donor's
    images); the text stays removable."""
    from mech.conditions import feature_condition, resample_features

    m = mech.load(tiny_model("qwen3_vl"))
    assert m.arch.injection_layers
    inputs = m.inputs(tiny_inputs("qwen3_vl", m.processor, batch=2))
    seen = []

    def grab(module, args, kwargs):  # every list of [n_visual, d_model] tensors the decoder receives
        seen.append(
            [
                v
                for v in kwargs.values()
                if isinstance(v, (list, tuple))
                and v
                and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in v)
            ]
        )

    handle = m.arch.module(m.model, "language_model").register_forward_pre_hook(grab, with_kwargs=True)
    try:
        m.logits(inputs)
        assert seen[0], "the tiny qwen3_vl must pass deepstack features to its decoder"
    finally:
        handle.remove()
    with pytest.raises(UnsupportedArchitectureError, match="white_image"):
        with feature_condition(m, inputs, "visual_noise"):
            pass
    clean = m.logits(inputs)
    with resample_features(m, inputs, torch.tensor([1, 0])):  # rows swap their images, deepstack included
        swapped = m.logits(inputs)
    assert not torch.allclose(swapped, clean)
    text_only = noise_removals(m, inputs, ("text",))
    assert set(text_only) == {"text"}  # the text's removal is unaffected
