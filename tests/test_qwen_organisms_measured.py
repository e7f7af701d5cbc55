"""The shipped Qwen2.5-VL organisms (issue 24): their cards, the instruments against oracles on them,
and the ground truth they are for (the planted biases ordered by the causal estimators).

Oracles: eager ``output_attentions`` summed by hand (attention mass), forward hooks written here
(activation patching), TransformerLens' ``get_act_patch_resid_pre`` where its bridge boots the
family, the model's own logits (DLA / decomposition completeness). Skipped when the organisms are not
built (``python -m mech.organisms.train qwen-balanced`` etc.).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mech
from mech.organisms.train import RECIPES

QWEN = ("qwen-image-biased", "qwen-balanced", "qwen-text-biased")


# ----------------------------------------------------------------------------- the shipped organisms
def _shipped(name: str):
    from mech.organisms import organism_dir

    try:
        return organism_dir(name)
    except mech.MechError:
        pytest.skip(f"organism {name} not built")


def _cards() -> dict:
    return {n: json.loads((_shipped(n) / "card.json").read_text())["mech_eval"] for n in QWEN}


def test_balanced_card_is_accurate():
    """Issue 24: balanced complete accuracy at least 0.9 (``mech eval``, n = 1000, the card)."""
    assert _cards()["qwen-balanced"]["accuracy"]["complete"] >= 0.9


def test_cards_show_the_planted_biases():
    """The issue's behavioural must-show, read from the cards (``mech eval``, n = 1000)."""
    cards = _cards()
    b, t, i = (cards[k] for k in ("qwen-balanced", "qwen-text-biased", "qwen-image-biased"))
    assert b["n"] == t["n"] == i["n"] == 1000
    w = "complete&white_image"
    io = "complete&image_only"
    assert t["agreement_pct"][w] >= b["agreement_pct"][w] + 30
    assert i["agreement_pct"][io] >= b["agreement_pct"][io] + 30
    for c in cards.values():
        assert len(c["image_token_counts"]) >= 3 and c["two_image_share"] >= 0.2


@pytest.fixture(scope="module")
def organism():
    _shipped("qwen-balanced")
    from mech.prepare.data import load_data

    return mech.load("organism:qwen-balanced"), load_data("organism:shapes-varied", n=24, seed=7)


def test_behaviour_recomputed_agrees_with_the_card(organism):
    """mech eval on a fresh sample (seed 7) lands within sampling error of the card's accuracy. The data set
    is passed as ``mech eval`` passes it (a ``Dataset``: the organisms' bare prompts, the format they were
    trained on); a plain list is prompted in the ``direct`` style, with an instruction and the options
    written out, which these organisms never saw."""
    from mech.measure.evaluation.run import evaluate

    m, samples = organism
    card = json.loads((_shipped("qwen-balanced") / "card.json").read_text())["mech_eval"]
    res = evaluate(m, samples, conditions=("complete",), scoring="option_text", batch_size=24, progress=False)
    p = card["accuracy"]["complete"]
    assert (
        abs(res["conditions"]["complete"]["accuracy"] - p) <= 4 * np.sqrt(p * (1 - p) / len(samples)) + 0.05
    )


def test_attention_mass_matches_eager_by_hand(organism):
    from mech.conditions import condition_inputs
    from mech.measure.attention import attention_mass, query_positions

    m, samples = organism
    inp = condition_inputs(m, samples[:8], "complete")
    am = attention_mass(m, inp, query="last")
    model = m.model
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**inp, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(before)
    idx, valid, _ = query_positions(inp.groups, "last")
    hot = inp.groups.one_hot()
    want = torch.stack(
        [
            torch.einsum("bhs,bsg->bhg", torch.stack([a[b][:, idx[b][0]] for b in range(a.shape[0])]), hot)
            for a in out.attentions
        ],
        1,
    )
    torch.testing.assert_close(am.mass, want.float(), rtol=0, atol=1e-5)
    assert (am.mass[..., am.groups.index("image")] > 0).all()


def test_dla_and_decomposition_are_complete(organism):
    from mech.curves import Contributions
    from mech.curves.decomposition import TOLERANCE
    from mech.curves.donors import contributions_for_rows, pair_donors

    m, samples = organism
    pairs = {g: pair_donors(samples, g) for g in ("image", "text")}
    c, a, b = contributions_for_rows(
        m, samples, range(len(samples)), pairs, estimators=("dla", "decomposition")
    )
    js = Contributions.concat([c]).to_json(n_boot=50)
    dec = js["decomposition"]
    assert dec["completeness"]["ok"] and dec["completeness"]["relative"] <= TOLERANCE
    torch.testing.assert_close(
        c.components["decomposition.decision"], c.components["decision"], atol=1e-4, rtol=0
    )
    from mech.conditions import condition_inputs
    from mech.measure.dla import direct_logit_attribution

    inp = condition_inputs(m, samples, "complete")
    d = direct_logit_attribution(m, inp, a, b)
    logits = m.logits(inp)
    r, q = torch.arange(len(samples)), inp.groups.last()
    torch.testing.assert_close(d.total(), (logits[r, q, a] - logits[r, q, b]).float(), atol=1e-4, rtol=0)


def test_patching_matches_transformer_lens(organism, monkeypatch):
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge.supported_architectures import qwen2_5_vl

    # TL's Qwen2.5-VL adapter lists torchvision as required because Hugging Face's Qwen2.5-VL video
    # processor needs it; the bridge itself never imports it, and the organisms' processor has no video
    # slot (mech.organisms.qwen.build_processor). torchvision has no CPU build for this torch (the
    # registry's 0.28.0 is a CUDA build whose operators do not load), so the check is lifted here only.
    monkeypatch.setattr(qwen2_5_vl.Qwen2_5_VLArchitectureAdapter, "required_libraries", [])
    import pandas as pd
    from transformer_lens.patching import get_act_patch_resid_pre

    from mech.conditions import condition_inputs
    from mech.engines.transformerlens import WithInputs, boot_bridge
    from mech.measure.patching import activation_patching

    m, samples = organism
    clean = condition_inputs(m, samples[:1], "complete")
    corr = condition_inputs(m, samples[:1], "white_image")
    assert bool(clean["attention_mask"].all())
    lg = m.logits(clean)[0, -1]
    a, c = lg.topk(2).indices
    a, c = a.view(1), c.view(1)
    try:
        bridge = boot_bridge(m)
    except Exception as exc:  # noqa: BLE001 - a bridge that does not support the family is a skip, said why
        pytest.skip(f"TransformerLens' bridge does not boot Qwen2.5-VL here: {type(exc).__name__}: {exc}")
    # every processor output but the ids: mm_token_type_ids gives Qwen2.5-VL its 3-D (M-RoPE) positions
    kw = {k: v for k, v in clean.items() if k != "input_ids"}
    _, cache = bridge.run_with_cache(clean["input_ids"], **kw)
    P = clean["input_ids"].shape[1]
    pos = [int(clean.groups.positions("image", 0)[0]), int(clean.groups.positions("text", 0)[0]), P - 1]
    df = pd.DataFrame([(layer, p) for layer in range(m.arch.n_layers) for p in pos], columns=["layer", "pos"])
    ckw = {k: v for k, v in corr.items() if k != "input_ids"}
    tl = get_act_patch_resid_pre(
        WithInputs(bridge, **ckw),
        corr["input_ids"],
        cache,
        lambda out: out[0, -1, a[0]] - out[0, -1, c[0]],
        index_axis_names=None,
        index_df=df,
    )
    masks = [torch.nn.functional.one_hot(torch.tensor([p]), P).bool() for p in pos]
    res = activation_patching(m, clean, corr, sites="resid_pre", positions=masks, answer=a, counterfactual=c)
    torch.testing.assert_close(res.patched["resid_pre"][:, :, 0].flatten(), tl.float(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- ground truth for the instruments
def measure_order(names: tuple[str, ...], data: str, n: int = 256, chunk: int = 64) -> dict:
    """``contrib.json``-style results of the shipped organisms ``names`` on ``n`` held-out items of
    ``data`` (the model's own decisions, the default removal, data-set-wide donors paired by content,
    as ``mech contrib``): ``{name: to_json(categories=question types)}``."""
    from mech.curves import PATCHED_GROUPS, Contributions
    from mech.curves.donors import contributions_for_rows, pair_donors
    from mech.curves.summary import category_of
    from mech.prepare.data import load_data

    samples = list(load_data(data, n=n))
    pairs = {g: pair_donors(samples, g) for g in PATCHED_GROUPS}
    out = {}
    for name in names:
        m = mech.load(f"organism:{name}")
        parts = [
            contributions_for_rows(m, samples, range(i, min(i + chunk, n)), pairs)[0]
            for i in range(0, n, chunk)
        ]
        out[name] = Contributions.concat(parts).to_json(
            n_boot=500, categories=[category_of(s) for s in samples]
        )
    return out


@pytest.fixture(scope="module")
def qwen_order():
    for name in QWEN:
        _shipped(name)
    return measure_order(QWEN, "organism:shapes-varied")


@pytest.mark.parametrize("estimator", ["patching", "decomposition"])
def test_qwen_removal_estimators_order_the_planted_biases(qwen_order, estimator):
    """As tests/test_contribution.py for the LLaVA organisms: Δ(text/image) image-biased < balanced <
    text-biased with non-overlapping 95% intervals, every estimator covering ≥ 95% of the samples and
    identical donors at most 5%, on heterogeneous data (image sizes, wordings, two-image questions)."""
    i, b, t = (qwen_order[k]["overall"][estimator] for k in QWEN)
    assert i["delta"] < b["delta"] < t["delta"], (i, b, t)
    assert i["ci95"][1] < b["ci95"][0] and b["ci95"][1] < t["ci95"][0], (i["ci95"], b["ci95"], t["ci95"])
    for name in QWEN:
        for est, o in qwen_order[name]["overall"].items():
            assert o["coverage"]["coverage"] >= 0.95, (name, est, o["coverage"])
        assert max(qwen_order[name]["overall"][estimator]["identical_donor"].values()) <= 0.05


def _image_share(entry: dict) -> float:
    c = entry["contribution"]
    return abs(c["image"]) / (abs(c["image"]) + abs(c["text"]))


@pytest.mark.parametrize(
    "estimator",
    [
        "patching",
        pytest.param(
            "decomposition",
            marks=pytest.mark.xfail(
                strict=True,
                reason=(
                    "measured on the rope-θ-4 organisms (n = 256): the decomposition's shares order the "
                    "types as patching does (planted 0.00-0.36, shape left / right 0.47 / 0.67) except colour "
                    "left (0.36) against same shape (0.32). Same shape's text donors come from the same answer "
                    "set (yes/no: same colour, existence), so removing its text changes which comparison is "
                    "asked and the text's share is large; about 25 samples a type. docs/organisms.md, 'What "
                    "was measured'."
                ),
            ),
        ),
    ],
)
def test_text_biased_planted_types_use_the_image_less_than_shape_types(qwen_order, estimator):
    by = qwen_order["qwen-text-biased"]["by_category"][estimator]
    planted = RECIPES["qwen-text-biased"]["prior_templates"]
    shape_types = [t for t in ("shape_left", "shape_right", "same_shape") if t in by]
    assert max(_image_share(by[t]) for t in planted if t in by) < min(
        _image_share(by[t]) for t in shape_types
    ), {t: round(_image_share(e), 3) for t, e in by.items()}


@pytest.mark.parametrize("name", QWEN)
def test_shipped_qwen_folder_is_small_safe_and_loads(name):
    folder = _shipped(name)
    files = {f.name: f.stat().st_size for f in folder.iterdir()}
    assert sum(files.values()) <= 10 * 2**20
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))]
    assert {"config.json", "model.safetensors", "card.json", "CARD.md", "train_info.json"} <= set(files)
    m = mech.load(f"organism:{name}")
    assert type(m.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    card = json.loads((folder / "card.json").read_text())
    assert card["training"]["command"] == f"python -m mech.organisms.train {name}"
    assert card["evaluation"]["n"] == 1000 and card["mech_eval"]["n"] == 1000


def test_patching_matches_hand_written_hooks(organism):
    """Denoising patching of ``resid_post`` (decoder layer outputs) at the image / text positions of a
    white-image run, against a forward hook written here: read the clean layer output, write it into
    the corrupted run at the group's positions (same sequence: the white image has the same size)."""
    from mech.conditions import condition_inputs
    from mech.measure.patching import activation_patching

    m, samples = organism
    clean = condition_inputs(m, samples[:6], "complete")
    corr = condition_inputs(m, samples[:6], "white_image")
    assert torch.equal(clean["input_ids"], corr["input_ids"])
    last = m.logits(clean)[torch.arange(6), clean.groups.last()]
    a, c = last.topk(2).indices.T
    res = activation_patching(
        m, clean, corr, sites="resid_post", positions=["image", "text"], answer=a, counterfactual=c
    )
    for layer in range(m.arch.n_layers):
        mod = m.arch.module(m.model, "layer", layer)
        for gi, name in enumerate(("image", "text")):
            store, mask = {}, clean.groups.mask(name)
            h = mod.register_forward_hook(
                lambda md, args, out: store.__setitem__(
                    "x", (out[0] if isinstance(out, tuple) else out).detach().clone()
                )
            )
            try:
                with torch.no_grad():
                    m.model(**clean)
            finally:
                h.remove()

            def write(md, args, out):
                x = (out[0] if isinstance(out, tuple) else out).clone()
                x[mask] = store["x"][mask]
                return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x

            h = mod.register_forward_hook(write)
            try:
                with torch.no_grad():
                    lg = m.model(**corr).logits[torch.arange(6), corr.groups.last()]
            finally:
                h.remove()
            r = torch.arange(6)
            torch.testing.assert_close(
                res.patched["resid_post"][layer, gi], lg[r, a] - lg[r, c], rtol=1e-5, atol=1e-5
            )
