"""mech.measure.repair: edits checked against hand-written hooks and the knockout engine, edits undone after the
call, random controls disjoint from the selection, AtP scores against finite differences, and a small repair of
the text-biased organism against its planted prior."""

import numpy as np
import pytest
import torch

import mech
from mech.errors import ConfigError, DataError
from mech.measure.repair import POINTS, Edit, applied, random_edit, repair
from mech.measure.repair import select as SE
from mech.measure.repair.edits import n_units
from mech.testing.tiny import tiny_inputs, tiny_model

FAMILIES = ["llava", "qwen2_5_vl", "gemma3", "idefics3", "internvl"]


def _tiny(family):
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    return m, m.inputs(tiny_inputs(family, proc, batch=2))


@pytest.fixture(scope="module")
def organism():
    from mech.prepare.data import load_data

    m = mech.load("organism:text-biased")
    return m, load_data("organism:shapes", n=90, seed=1), load_data("organism:shapes", n=60, seed=0)


def _valid_logits(m, inputs):
    with torch.no_grad():
        out = m.model(**inputs).logits
    return out[inputs.groups.valid.to(out.device)]


@pytest.mark.parametrize("family", FAMILIES)
def test_neuron_zero_ablation_equals_hand_written_hook(family):
    """Zeroing MLP hidden units at the answer position = a hand-written pre-hook on the down projection."""
    m, inputs = _tiny(family)
    d_mlp = n_units(m, "neurons")[1]
    units = ((0, 1), (0, d_mlp - 1), (m.arch.n_layers - 1, 3))
    with applied(m, inputs, Edit("zero", "neurons", units)):
        got = _valid_logits(m, inputs)
    q = inputs.groups.last()
    handles = []
    for layer, idx in ((0, [1, d_mlp - 1]), (m.arch.n_layers - 1, [3])):
        down = m.arch.module(m.model, "mlp", layer).down_proj

        def pre(mod, args, idx=idx):
            x = args[0].clone()
            x[torch.arange(x.shape[0])[:, None], q[:, None], torch.tensor(idx)[None]] = 0
            return (x,)

        handles.append(down.register_forward_pre_hook(pre))
    try:
        want = _valid_logits(m, inputs)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(got, want)
    assert not torch.equal(got, _valid_logits(m, inputs))  # the edit did something


@pytest.mark.parametrize(
    "kind,granularity,units",
    [
        ("zero", "neurons", ((0, 0), (1, 5))),
        ("mean", "heads", ((0, 1),)),
        ("zero", "layers", ((1, 1),)),
        ("steer", "layers", ((0, 1),)),
        ("reweight", "heads", ((1, 0), (0, 1))),
        ("zero", "heads", ((1, 1),)),
    ],
)
def test_edit_is_undone_after_the_call(kind, granularity, units):
    """After the block, and after an exception inside it, the logits equal the unedited model's."""
    m, inputs = _tiny("llava")
    before = _valid_logits(m, inputs)

    def n_hooks():
        return sum(len(h) for mod in m.model.modules() for h in (mod._forward_hooks, mod._forward_pre_hooks))

    hooks_before = n_hooks()
    values = {}
    if kind == "mean":
        values = {"blocks.0.attn.hook_z": torch.randn(m.arch.n_heads, m.arch.d_head)}
    if kind == "steer":
        values = {"blocks.0.hook_resid_post": torch.randn(m.arch.d_model)}
    edit = Edit(kind, granularity, units, alpha=3.0, values=values)
    with applied(m, inputs, edit):
        during = _valid_logits(m, inputs)
    assert not torch.equal(during, before)
    assert torch.equal(_valid_logits(m, inputs), before)
    with pytest.raises(RuntimeError):
        with applied(m, inputs, edit):
            raise RuntimeError("inside")
    assert torch.equal(_valid_logits(m, inputs), before)
    assert n_hooks() == hooks_before


def test_reweight_alpha_one_is_identity_and_zero_is_knockout():
    """alpha = 1 changes nothing; alpha = 0 on every head of a layer equals blocking image -> answer edges in that
    layer with the knockout engine (mech.engines.edge_blocker, an independent attention function)."""
    from mech.engines.edge_blocker import blocking

    m, inputs = _tiny("llava")
    base = _valid_logits(m, inputs)
    with applied(m, inputs, Edit("reweight", "heads", ((0, 0), (1, 1)), alpha=1.0)):
        same = _valid_logits(m, inputs)
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5 * float(base.abs().max()))
    with applied(m, inputs, Edit("reweight", "layers", ((1, 0),), alpha=0.0)):
        got = _valid_logits(m, inputs)
    g = inputs.groups
    last = torch.zeros_like(g.valid)
    last[torch.arange(last.shape[0]), g.last()] = True
    active = torch.zeros(last.shape[0], m.arch.n_layers, dtype=torch.bool)
    active[:, 1] = True
    with blocking(m, [(g.mask("image"), last)], active):
        want = _valid_logits(m, inputs)
    assert not torch.equal(got, base)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_random_control_never_overlaps_the_selection():
    m, _ = _tiny("llava")
    n_l, n_u = n_units(m, "neurons")
    pool = [(l, i) for l in range(n_l) for i in range(n_u)]
    rng = np.random.default_rng(0)
    for k in (1, 7, len(pool) // 2):
        sel = Edit("zero", "neurons", tuple(pool[j] for j in rng.choice(len(pool), k, replace=False)))
        for j in range(20):
            r = random_edit(sel, pool, np.random.default_rng(j), "random")
            assert len(r.units) == k and len(set(r.units)) == k and not set(r.units) & set(sel.units)
    with pytest.raises(ConfigError):
        random_edit(Edit("zero", "neurons", tuple(pool[: len(pool) // 2 + 1])), pool, rng, "random")


def test_attribution_scores_match_hand_written_gradients():
    """AtP's zero-ablation score per neuron, −(0 − a)·∂M/∂a at the answer position, against the same product from
    hand-written down-projection pre-hooks and autograd (and its sign against the exact ablation of one neuron)."""
    m, inputs = _tiny("llava")
    q = inputs.groups.last()
    r = torch.arange(2)
    with torch.no_grad():
        last = m.model(**inputs).logits[r, q]
    prior, gold = last.argmax(-1), last.argmin(-1)
    scores = SE.attribution_scores(m, [(inputs, prior, gold)], "neurons", "zero")
    acts, handles = {}, []
    for layer in range(m.arch.n_layers):

        def pre(mod, args, layer=layer):
            leaf = torch.zeros_like(args[0], requires_grad=True)  # a leaf added, so the graph stays whole
            acts[layer] = (args[0].detach(), leaf)
            return (args[0] + leaf,)

        handles.append(m.arch.module(m.model, "mlp", layer).down_proj.register_forward_pre_hook(pre))
    try:
        out = m.model(**inputs).logits[r, q]
        metric = (out[r, prior] - out[r, gold]).sum()
        grads = torch.autograd.grad(metric, [acts[l][1] for l in range(m.arch.n_layers)])
    finally:
        for h in handles:
            h.remove()
    want = torch.stack([(acts[l][0][r, q] * grads[l][r, q]).sum(0) for l in range(m.arch.n_layers)]).double()
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    layer, i = divmod(
        int(scores.abs().argmax()), scores.shape[1]
    )  # the largest estimate: same sign as the exact effect
    with applied(m, inputs, Edit("zero", "neurons", ((layer, i),))), torch.no_grad():
        out = m.model(**inputs).logits[r, q]
    exact = float((out[r, prior] - out[r, gold]).sum() - (last[r, prior] - last[r, gold]).sum())
    assert np.sign(exact) == -np.sign(float(scores[layer, i]))


def test_bad_options_raise(organism):
    m, fit, held = organism
    with pytest.raises(DataError):
        repair(m, held, held, k=10)
    with pytest.raises(ConfigError):
        repair(m, fit, held, k=10, n_random=3)
    with pytest.raises(ConfigError):
        repair(m, fit, held, source="decomposition", granularity="neurons")
    with pytest.raises(ConfigError):
        repair(m, fit, held, edit="steer", granularity="neurons")


def test_repair_finds_the_planted_prior(organism):
    """text-biased: zeroing the attributed neurons turns prior-wrong items right, far beyond same-size random
    neurons; the shape questions (prior not planted) stay right; the result carries every reported number."""
    m, fit, held = organism
    before = _valid_logits(m, m.prepare([s["images"] for s in held[:4]], [s["question"] for s in held[:4]]))
    r = repair(m, fit, held, k=200, ks=[50, 200], batch_size=60, n_boot=200)
    j = r.to_json()
    assert j["planted"] == ["color_of_shape", "color_left", "color_right", "exist", "count"]
    assert (
        j["unedited"]["accuracy"]["prior_wrong"]["value"] < 0.1
    )  # the planted prior: wrong where it is wrong
    c = j["controls"]
    assert len(c["random"]) == 5 and c["above_max"] and c["selected"] > 0.3
    assert (
        j["selected"]["accuracy"]["unplanted"]["value"]
        >= j["unedited"]["accuracy"]["unplanted"]["value"] - 0.05
    )
    for ctl in r.controls + [r.edit]:
        assert len(ctl.units) == 200
    for ctl in r.controls:
        assert not set(ctl.units) & set(r.edit.units)
    assert [p["k"] for p in j["curve"]] == [50, 200]
    for key in ("flips", "options", "white_image", "answer_distribution", "prior_to_gold"):
        assert key in j["selected"]
    assert abs(sum(j["selected"]["options"]["distribution"].values()) - 1) < 1e-9
    frame = r.to_frame()
    assert {"edit", "metric", "group", "value", "lo", "hi", "n"} <= set(frame.columns)
    assert set(frame["edit"]) == {"unedited", "selected"} | {f"random {i}" for i in range(1, 6)}
    assert r.tensors()["pred.selected.complete.answer_set"].shape == (60,)
    after = _valid_logits(m, m.prepare([s["images"] for s in held[:4]], [s["question"] for s in held[:4]]))
    assert torch.equal(before, after)
    # another model: re-ranked by default; the text-biased ranking applied to it is labelled
    bal = mech.load("organism:balanced")
    t = repair(bal, fit, held, selection=r.selection, k=50, ks=[50], batch_size=60, n_boot=50)
    assert (
        t.transferred_from == "organism:text-biased"
        and "ranked on organism:text-biased" in t.to_json()["label"]
    )


def test_settings_literals_are_the_constants():
    from mech.measure.repair import GRANULARITIES, KINDS
    from mech.measure.repair.edits import POSITIONS
    from mech.measure.repair.select import SOURCES
    from mech.measure.repair.targets import PRIORS
    from mech.runs import settings as S

    for literal, constant in (
        (S.RepairEdit, KINDS),
        (S.Granularity, GRANULARITIES),
        (S.RepairSource, SOURCES),
        (S.RepairPositions, POSITIONS),
        (S.Prior, PRIORS),
    ):
        assert S.allowed(literal) == tuple(constant)
    from mech.runs.jobs import COMMANDS

    assert COMMANDS["repair"] is S.RepairSettings


def test_mech_repair_command(tmp_path):
    """``mech repair`` on the run loop: files, the identity, a summary; equal seeds for the two splits refused."""
    from mech.cli import main
    from mech.results import read_json

    out = tmp_path / "r"
    rc = main(
        [
            "repair",
            "--model",
            "organism:text-biased",
            "--n",
            "40",
            "--fit-n",
            "60",
            "--k",
            "40",
            "--ks",
            "40",
            "--batch-size",
            "40",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    j = read_json(out / "repair.json")
    assert {"unedited", "selected", "random", "controls", "curve", "identity"} <= set(j)
    assert j["n_held_out"] == 40 and j["identity"]["settings"]["fit_seed"] == 1
    assert (out / "repair.png").is_file() and (out / "repair.safetensors").is_file()
    assert (
        main(
            [
                "repair",
                "--model",
                "organism:text-biased",
                "--n",
                "40",
                "--fit-seed",
                "0",
                "--out",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 1
    )


def test_k_is_chosen_on_the_fit_split(organism):
    """max_fit_drop picks the largest k whose edit costs at most that much fit accuracy; the held-out split
    (here two different ones) never changes the choice."""
    from mech.prepare.data import load_data

    m, fit, held = organism
    other = load_data("organism:shapes", n=30, seed=3)
    a = repair(m, fit, held, ks=[20, 60, 300], max_fit_drop=0.0, batch_size=90, n_boot=50)
    b = repair(m, fit, other, ks=[20, 60, 300], max_fit_drop=0.0, batch_size=90, n_boot=50)
    rule = a.meta["k_rule"]
    assert a.k == b.k == rule["chosen"] and a.k in (20, 60, 300)
    fit_acc = {int(k): v for k, v in rule["fit_accuracy"].items()}
    assert rule["fit_accuracy_unedited"] - fit_acc[a.k] <= 0.0 + 1e-12
    assert all(rule["fit_accuracy_unedited"] - v > 0 for k, v in fit_acc.items() if k > a.k)


@pytest.mark.parametrize("data", ["organism:shapes", "organism:shapes-varied"])
def test_unedited_accuracy_is_mech_evals_on_both_organism_data_sets(data):
    """Oracle: ``mech.evaluate``'s complete-image accuracy (option-text scoring). The repair's unedited
    option-scored accuracy must equal it on both organism data sets; a letter scoring of word options (what
    the repair fell back to on ``organism:shapes-varied`` before) would give a number near the first
    option's share instead, silently."""
    from mech.measure.evaluation.run import evaluate
    from mech.measure.repair import repair
    from mech.prepare.data import load_data

    spec = "organism:text-biased" if data == "organism:shapes" else "organism:qwen-text-biased"
    m = mech.load(spec)
    held = load_data(data, n=48, seed=0)
    fit = load_data(data, n=48, seed=1)
    r = repair(m, fit, held, k=8, ks=[8], n_boot=50, batch_size=48).to_json()
    assert r["scoring"] == "answer_set" and r["option_scoring"] == "option_text"
    ev = evaluate(m, held, conditions=["complete"], progress=False)
    assert r["unedited"]["options"]["accuracy"]["value"] == pytest.approx(
        ev["conditions"]["complete"]["accuracy"]
    )


def test_answer_means_equal_the_cached_activations_at_the_answer_position():
    """Oracle: run_with_cache's full activations, gathered at each row's answer position and averaged."""
    from mech.conditions import condition_inputs
    from mech.engines.hooks import run_with_cache
    from mech.measure.repair.plan import answer_means
    from mech.prepare.data import load_data

    m = mech.load("organism:text-biased")
    samples = list(load_data("organism:shapes", n=12))
    names = ["blocks.0.mlp.hook_post", "blocks.2.attn.hook_z", "blocks.3.hook_resid_post"]
    got = answer_means(m, samples, names, "complete", 5)
    want = {n: 0 for n in names}
    for i in range(0, len(samples), 5):
        inputs = condition_inputs(m, samples[i : i + 5], "complete")
        _, cache = run_with_cache(m, inputs, names, points=POINTS)
        q = inputs.groups.last()
        for n in names:
            want[n] = want[n] + cache[n][torch.arange(len(q)), q].double().sum(0)
    for n in names:
        eps = torch.finfo(
            torch.float32
        ).eps  # the same activations, summed in float64: only the final rounding
        torch.testing.assert_close(got[n], (want[n] / len(samples)).float(), rtol=2 * eps, atol=0)
