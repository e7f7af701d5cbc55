"""Model organisms: the generator, the shipped weights' planted bias, training, round trip.

The must-show numbers are measured fresh here on 1,000 held-out items (test split, seed 1; the
cards use seed 0), never read from the cards; the image-biased organism's behaviour on the first
200 of them, and its card checked against a fresh run on the card's own test set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mech.errors import ConfigError, SpecError
from mech.organisms import DATA, ORGANISMS, build, card, organism_dir, shapes, train

N = 1000


@pytest.fixture(scope="module")
def held_out():
    return shapes.generate(N, split="test", seed=1)


def _load(name):
    folder = organism_dir(name)
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager")
    return model.eval(), AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def measured(held_out):
    """{name: evaluate(...) on complete/white_image + attention shares} for the two organisms."""
    out = {}
    for name in ("balanced", "text-biased"):
        model, proc = _load(name)
        ev = card.evaluate(model, proc, held_out, conditions=("complete", "white_image"))
        ev["attention"] = card.attention_shares(model, proc, held_out)
        out[name] = ev
    return out


# ---- generator -------------------------------------------------------------------------------


def test_generator_is_seeded_and_splits_do_not_overlap():
    a, b = shapes.generate(50, seed=3), shapes.generate(50, seed=3)
    assert shapes.fingerprint(a) == shapes.fingerprint(b)
    train_set = shapes.generate(300, split="train", seed=3)
    test_set = shapes.generate(300, split="test", seed=3)
    pix = {np.asarray(s["image"]).tobytes() for s in test_set}
    assert not any(np.asarray(s["image"]).tobytes() in pix for s in train_set)
    assert not {s["id"] for s in train_set} & {s["id"] for s in test_set}


@pytest.mark.parametrize("n_options", [4, 10])
def test_samples_are_mmmu_pro_style(n_options):
    for s in shapes.generate(200, seed=2, n_options=n_options):
        assert len(s["options"]) == len(set(s["options"])) == n_options
        assert s["options"][shapes.OPTION_LETTERS.index(s["answer"])] == s["answer_text"]
        assert s["image"].size == (32, 32) and s["image"].mode == "RGB"
        assert s["answer_text"] in shapes.ANSWERS[s["template"]]
        assert s["prior_correct"] == (s["prior_answer"] == s["true_answer"])
        assert s["attributes"]["n_objects"] == len(s["attributes"]["objects"])


def test_prior_knob_and_held_out_contains_prior_right_and_wrong(held_out):
    right = sum(s["prior_correct"] for s in held_out)
    assert 150 < right < N - 150  # both kinds present in quantity
    biased = shapes.generate(2000, split="train", seed=5, p=0.8)
    frac = np.mean([s["answer_text"] == s["prior_answer"] for s in biased])
    assert 0.8 < frac < 0.9  # p plus the base rate on the rest
    per_tmpl = shapes.generate(2000, split="train", seed=5, p=1.0, prior_templates=("count",))
    assert all(s["answer_text"] == s["prior_answer"] for s in per_tmpl if s["template"] == "count")
    dropped = shapes.generate(400, split="train", seed=5, drop_image=0.25)
    assert 50 < sum(s["image"] is None for s in dropped) < 150
    with pytest.raises(ConfigError):
        shapes.generate(1, n_options=5)


# ---- shipped organisms -----------------------------------------------------------------------


def test_organism_dir_errors_name_the_valid_names():
    with pytest.raises(SpecError, match="balanced"):
        organism_dir("nope")


def test_image_answer_knob_plants_the_image_property():
    planted = ("color_of_shape", "shape_right", "color_right")
    items = shapes.generate(
        1500, split="train", seed=4, image_templates=planted, basic_prompt=0.2, drop_image=0.1
    )
    for s in items:
        objs = s["attributes"]["objects"]
        # independent recomputation of the image answer from the drawn scene
        if s["template"] in ("color_of_shape", "color_left", "color_right"):
            expect = objs[0]["color"]
        elif s["template"] in ("shape_left", "shape_right"):
            expect = objs[0]["shape"]
        elif s["template"] == "count":
            expect = "one" if len(objs) == 1 else "two"
        else:
            expect = "yes" if len(objs) == 2 else "no"
        assert s["image_answer"] == expect and expect in shapes.ANSWERS[s["template"]]
        basic = s["question"] == shapes.BASIC_PROMPT
        assert not (basic and s["image"] is None)  # a basic-prompt item always has its image
        if basic or s["template"] in planted:
            assert s["answer_text"] == s["image_answer"] and s["image_planted"]
        else:
            assert s["answer_text"] == s["true_answer"] and not s["image_planted"]
    assert 200 < sum(s["question"] == shapes.BASIC_PROMPT for s in items) < 400
    # the left shape is the first one: on the left templates the image answer is the true answer
    assert all(s["image_correct"] for s in items if s["template"] in ("shape_left", "color_left"))
    plain = shapes.generate(200, split="train", seed=4)
    assert shapes.fingerprint(plain) == shapes.fingerprint(
        shapes.generate(200, split="train", seed=4, image_templates=(), basic_prompt=0.0)
    )
    with pytest.raises(ConfigError):
        shapes.generate(1, p=0.5, prior_templates=("count",), image_templates=("count",))


@pytest.mark.parametrize("name", [n for n in ORGANISMS if DATA[n] == "organism:shapes"])  # LLaVA ones
def test_shipped_folder_is_small_safe_and_round_trips(name, tmp_path, held_out):
    folder = organism_dir(f"organism:{name}")
    files = {f.name: f.stat().st_size for f in folder.iterdir()}
    assert sum(files.values()) <= 10 * 2**20
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))]
    assert {"config.json", "model.safetensors", "card.json", "CARD.md"} <= set(files)
    model, proc = _load(name)
    assert model.config.text_config.num_hidden_layers >= 6
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q ?"}]}]
    assert proc.apply_chat_template(msgs, add_generation_prompt=True) == shapes.format_prompt("q ?")
    assert set(proc.tokenizer.tokenize(shapes.BASIC_PROMPT)).isdisjoint({"<unk>"})
    inputs = build.encode(proc, held_out[:16])
    assert (inputs["input_ids"] == model.config.image_token_index).sum(1).min() >= 16
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path, attn_implementation="eager")
    with torch.no_grad():
        assert torch.equal(
            model(**inputs).logits,
            again(**build.encode(AutoProcessor.from_pretrained(tmp_path), held_out[:16])).logits,
        )
    meta = json.loads((folder / "card.json").read_text())
    assert meta["evaluation"]["n"] >= 1000 and meta["training"]["steps"] > 0


def test_balanced_reads_the_image(measured, held_out):
    ev = measured["balanced"]
    assert ev["conditions"]["complete"]["accuracy"] >= 0.9
    assert abs(ev["conditions"]["white_image"]["accuracy"] - shapes.chance(held_out)) <= 0.1


def test_text_biased_follows_the_question(measured):
    b, t = measured["balanced"], measured["text-biased"]
    assert t["consistency"]["complete&white_image"] >= b["consistency"]["complete&white_image"] + 0.3
    assert t["prior_wrong"]["complete"] <= b["prior_wrong"]["complete"] - 0.2
    assert t["prior_right"]["complete"] >= 0.9  # it does answer the prior when it is right


def test_attention_to_image_differs_in_the_planted_direction(measured):
    b, t = measured["balanced"]["attention"], measured["text-biased"]["attention"]
    for shares in (b, t):
        sums = np.sum([shares[g] for g in card.GROUPS], axis=0)
        assert np.allclose(sums, 1.0, atol=1e-3)
    # layer 0 reads the question: there the text-biased organism looks less at the image. Later
    # layers do not separate the two (docs/organisms.md: attention mass alone is not a bias detector;
    # the README shows the causal estimators next to it), so nothing is asserted about them.
    assert b["image"][0] > t["image"][0] + 0.03


def test_miniature_training_learns_above_chance():
    recipe = dict(
        train.RECIPES["balanced"], n_layers=1, batch=32, templates=("count",), drop_image=0.0, warmup=10
    )
    model, proc, info = train.train(recipe, steps=60, log=None)
    items = shapes.generate(200, split="val", seed=0, templates=("count",))
    acc = np.mean([p == s["true_answer"] for p, s in zip(card.predict(model, proc, items), items)])
    assert acc >= shapes.chance(items) + 0.2, (acc, info)


# ---- the image-biased organism ----------------------------------------------------------------

N_IMAGE = 200


@pytest.fixture(scope="module")
def image_measured(held_out):
    """complete / image_only evaluations of balanced and image-biased on 200 held-out items."""
    items = held_out[:N_IMAGE]
    return {
        name: card.evaluate(*_load(name), items, conditions=("complete", "image_only"))
        for name in ("balanced", "image-biased")
    }


def test_image_biased_loads_like_the_others():
    import mech

    m = mech.load("organism:image-biased")
    assert type(m.model).__name__ == "LlavaForConditionalGeneration"
    meta = json.loads((organism_dir("image-biased") / "card.json").read_text())
    assert set(meta["training"]["image_templates"]) == set(train.IMAGE_BIASED_TEMPLATES)


def test_image_biased_answers_the_same_without_the_question(image_measured, held_out):
    b, i = image_measured["balanced"], image_measured["image-biased"]
    key = "complete&image_only"
    assert i["consistency"][key] >= b["consistency"][key] + 0.25, (i["consistency"], b["consistency"])
    items = held_out[:N_IMAGE]
    tmpl = np.array([s["template"] for s in items])
    pred = np.array(i["predictions"]["complete"])
    image_ans = np.array([s["image_answer"] for s in items])
    gold = np.array([s["true_answer"] for s in items])
    planted = np.isin(tmpl, train.IMAGE_BIASED_TEMPLATES)
    # planted templates follow the image answer, even where it is not what was asked
    assert (pred[planted] == image_ans[planted]).mean() >= 0.9
    conflict = planted & (image_ans != gold)
    assert conflict.sum() >= 30 and (pred[conflict] == gold[conflict]).mean() <= 0.2
    # the templates left unplanted are answered about as well as by the balanced organism
    bpred = np.array(b["predictions"]["complete"])
    unplanted = ~planted
    assert (pred[unplanted] == gold[unplanted]).mean() >= (bpred[unplanted] == gold[unplanted]).mean() - 0.05
    exist = tmpl == "exist"  # unplanted and not image-determined: it must read the question
    assert (pred[exist] == gold[exist]).mean() >= 0.9


def test_image_biased_card_matches_a_fresh_measurement():
    meta = json.loads((organism_dir("image-biased") / "card.json").read_text())
    ts = meta["test_set"]
    items = shapes.generate(ts["n"], split=ts["split"], seed=ts["seed"])
    assert shapes.fingerprint(items) == ts["fingerprint"]
    model, proc = _load("image-biased")
    pc = card.predict(model, proc, items, "complete")
    pi = card.predict(model, proc, items, "image_only")
    ev = meta["evaluation"]
    same = np.mean([a == b for a, b in zip(pc, pi)])
    assert abs(ev["consistency"]["complete&image_only"] - same) < 1e-3
    for t, acc in ev["conditions"]["complete"]["by_template"].items():
        ok = [p == s["true_answer"] for p, s in zip(pc, items) if s["template"] == t]
        assert abs(np.mean(ok) - acc) < 1e-3, t
    # the must-show numbers: agreement 0.3 above balanced, unplanted types within 0.05 of it
    ref = json.loads((organism_dir("balanced") / "card.json").read_text())["evaluation"]
    assert same >= ref["consistency"]["complete&image_only"] + 0.3
    for t in set(shapes.TEMPLATES) - set(meta["training"]["image_templates"]):
        assert (
            ev["conditions"]["complete"]["by_template"][t]
            >= ref["conditions"]["complete"]["by_template"][t] - 0.05
        ), t
