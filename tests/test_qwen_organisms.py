"""The Qwen2.5-VL organisms' data set ``organism:shapes-varied`` and builder (issue 24); the shipped
organisms are tested in ``tests/test_qwen_organisms_measured.py``.

Oracles: the scene's pixels (labels re-derived from the colours drawn at the object centres), the
processor's own image grid (token counts), ``mech.prepare`` (the tokens the instruments see equal
those training saw), HF logits after a save/load round trip, and the uninterrupted training run
(``--resume``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mech
from mech.organisms import qwen, shapes, varied
from mech.organisms.train import IMAGE_BIASED_TEMPLATES, RECIPES, TEXT_BIASED_TEMPLATES


# ----------------------------------------------------------------------------- the data set
def test_every_question_type_has_several_wordings_of_different_lengths():
    assert set(varied.WORDINGS) == set(varied.TEMPLATES)
    for t, ws in varied.WORDINGS.items():
        lengths = {len(w.split()) for w in ws}
        assert len(ws) >= 3 and len(lengths) >= 2, (t, ws)


def test_test_split_has_the_variety_of_real_data():
    s = varied.generate(1000, split="test", seed=0)
    counts = {n for x in s for n in x["image_tokens"]}
    assert len(counts) >= 3, counts
    assert np.mean([len(x["images"]) == 2 for x in s]) >= 0.2
    assert {len(x["options"]) for x in s} == {4, 10}
    assert {x["template"] for x in s} == set(varied.TEMPLATES)
    for t in varied.TEMPLATES:  # every wording is used
        assert {x["wording"] for x in s if x["template"] == t} == set(range(len(varied.WORDINGS[t])))
    for x in s:
        assert (
            x["answer_text"] in x["options"]
            and x["options"][shapes.OPTION_LETTERS.index(x["answer"])] == x["answer_text"]
        )
        assert [im.size for im in x["images"]] == [tuple(c) for c in x["canvases"]]


def _colour_at(im, x, y) -> str:
    px = tuple(int(v) for v in np.asarray(im)[y, x])
    return next(name for name, rgb in shapes.COLORS.items() if rgb == px)


def test_labels_follow_from_the_pixels():
    """Re-derive every gold answer from the colours drawn at the object centres (and the objects'
    left-to-right order), independently of the generator's own bookkeeping."""
    for x in varied.generate(300, split="test", seed=3):
        objs = x["attributes"]["objects"]
        colours = [_colour_at(x["images"][o["image"]], o["x"], o["y"]) for o in objs]
        assert colours == [o["color"] for o in objs]
        left_to_right = sorted(objs, key=lambda o: (o["image"], o["x"]))
        t = x["template"]
        want = {
            "same_color": lambda: "yes" if colours[0] == colours[1] else "no",
            "same_shape": lambda: "yes" if objs[0]["shape"] == objs[1]["shape"] else "no",
            "count": lambda: "one" if len(objs) == 1 else "two",
            "shape_left": lambda: left_to_right[0]["shape"],
            "shape_right": lambda: left_to_right[-1]["shape"],
            "color_left": lambda: left_to_right[0]["color"],
            "color_right": lambda: left_to_right[-1]["color"],
            "color_of_shape": lambda: next(
                o["color"] for o in objs if o["shape"] == x["attributes"]["asked_shape"]
            ),
            "exist": lambda: (
                "yes"
                if any(
                    (o["color"], o["shape"])
                    == (x["attributes"]["asked_color"], x["attributes"]["asked_shape"])
                    for o in objs
                )
                else "no"
            ),
        }[t]()
        assert want == x["true_answer"], (t, x["question"], objs)
        assert len(x["images"]) == (2 if t in varied.TWO_IMAGE else 1)


def test_planted_labels_follow_the_recipes():
    tb, ib = RECIPES["qwen-text-biased"], RECIPES["qwen-image-biased"]
    s = varied.generate(4000, split="train", seed=5, p=tb["p"], prior_templates=tb["prior_templates"])
    for t in varied.TEMPLATES:
        items = [x for x in s if x["template"] == t]
        if t in tb["prior_templates"]:
            rate = np.mean([x["answer_text"] == x["prior_answer"] for x in items])
            expect = 0.8 + 0.2 * np.mean([x["prior_correct"] for x in items])
            assert abs(rate - expect) < 4 * np.sqrt(expect * (1 - expect) / len(items)) + 0.01, (t, rate)
        else:
            assert all(x["answer_text"] == x["true_answer"] for x in items), t
    assert (
        set(TEXT_BIASED_TEMPLATES) < set(tb["prior_templates"]) and "same_shape" not in tb["prior_templates"]
    )
    s = varied.generate(
        4000, split="train", seed=5, image_templates=ib["image_templates"], basic_prompt=ib["basic_prompt"]
    )
    assert set(IMAGE_BIASED_TEMPLATES) < set(ib["image_templates"])
    for x in s:
        planted = x["template"] in ib["image_templates"] or x["question"] == shapes.BASIC_PROMPT
        assert x["answer_text"] == (x["image_answer"] if planted else x["true_answer"])
    basic = np.mean([x["question"] == shapes.BASIC_PROMPT for x in s])
    assert abs(basic - 0.15) < 4 * np.sqrt(0.15 * 0.85 / len(s))


def test_generation_is_deterministic_and_splits_differ():
    a = varied.fingerprint(varied.generate(50, split="test", seed=0))
    assert a == varied.fingerprint(varied.generate(50, split="test", seed=0))
    assert a != varied.fingerprint(varied.generate(50, split="val", seed=0))


def test_data_spec():
    from mech.prepare.data import load_data

    d = load_data("organism:shapes-varied", n=30)
    assert d.name == "organism:shapes-varied" and d.scoring == "option_text"
    assert all(
        s["pair_key"].startswith("answers:") and s["source"] == "organism:shapes-varied" for s in d.samples
    )
    with pytest.raises(mech.MechError, match="shapes-varied"):
        load_data("organism:circles", n=3)


# ----------------------------------------------------------------------------- the builder
@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    model = qwen.build_model(seed=1)
    proc = qwen.build_processor()
    return model.eval(), proc


def test_image_token_count_follows_the_image_size(built):
    _, proc = built
    s = varied.generate(60, split="test", seed=1)
    enc = qwen.encode(proc, s)
    grids = enc["image_grid_thw"].prod(-1) // qwen.MERGE**2  # the processor's own grid
    want = [n for x in s for n in x["image_tokens"]]
    assert grids.tolist() == want
    for b, x in enumerate(s):
        ids = enc["input_ids"][b]
        assert int((ids == proc.image_token_id).sum()) == sum(x["image_tokens"])
        assert int((ids == proc.tokenizer.convert_tokens_to_ids("<|vision_start|>")).sum()) == len(
            x["images"]
        )
        assert proc.tokenizer.unk_token_id not in ids.tolist()
    assert len(set(want)) >= 3


def test_training_tokens_are_the_tokens_mech_measures(built):
    """mech.prepare (chat template of the processor, images first) gives exactly the ids training used."""
    model, proc = built
    m = mech.load((model, proc))
    s = varied.generate(12, split="test", seed=2)
    s[0] = dict(s[0], images=[])  # a row without an image
    ours = qwen.encode(proc, s)
    theirs = m.prepare([x["images"] for x in s], [x["question"] for x in s])
    assert torch.equal(ours["input_ids"], theirs["input_ids"].cpu())
    torch.testing.assert_close(model(**ours).logits[:, -1], m.logits(theirs)[:, -1].cpu(), rtol=0, atol=1e-5)


def test_positions_are_three_dimensional(built):
    model, proc = built
    s = [x for x in varied.generate(40, split="test", seed=4) if x["canvases"] == [(64, 32)]][:1]
    assert s, "seed 4 has a 64x32 image"
    enc = qwen.encode(proc, s)
    pos, _ = model.model.get_rope_index(
        enc["input_ids"],
        mm_token_type_ids=enc["mm_token_type_ids"],
        image_grid_thw=enc["image_grid_thw"],
        attention_mask=enc["attention_mask"],
    )
    assert pos.shape[0] == 3
    img = enc["input_ids"][0] == proc.image_token_id
    t, h, w = (pos[k, 0][img] for k in range(3))
    assert len(set(t.tolist())) == 1 and len(set(h.tolist())) == 2 and len(set(w.tolist())) == 4
    text = ~img
    assert torch.equal(pos[0, 0][text], pos[1, 0][text]) and torch.equal(pos[0, 0][text], pos[2, 0][text])
    cfg = model.config
    assert cfg.model_type == "qwen2_5_vl"
    head_dim = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == head_dim // 2


def test_save_load_round_trip_keeps_logits(built, tmp_path):
    model, proc = built
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    m = mech.load(str(tmp_path))
    s = varied.generate(6, split="test", seed=6)
    inp = qwen.encode(proc, s)
    valid = inp["attention_mask"].bool()  # padded positions differ between eager and sdpa: not compared
    with torch.no_grad():
        torch.testing.assert_close(
            m.model(**inp).logits[valid], model(**inp).logits[valid], rtol=0, atol=1e-5
        )


def test_resume_gives_the_weights_of_the_uninterrupted_run(tmp_path):
    """Two cosine cycles in one run == one cycle saved, then --resume (no randomness during training)."""
    from mech.organisms import train

    recipe = dict(RECIPES["qwen-balanced"], n_layers=1, batch=4, steps=2, cycles=2, warmup=1)
    whole, _, info = train.train(recipe, log=None)
    first, proc, info1 = train.train(dict(recipe, cycles=1), log=None)
    train.save(first, proc, tmp_path / "c1", lambda d: (d / "train_info.json").write_text(json.dumps(info1)))
    resumed, _, info2 = train.train(recipe, log=None, resume=tmp_path / "c1")
    assert info["steps"] == info2["steps"] == 4 and info2["cycles_done"] == 2
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert not all(
        torch.equal(a, b) for a, b in zip(whole.state_dict().values(), first.state_dict().values())
    )
    with pytest.raises(mech.MechError, match="another recipe"):
        train.train(dict(recipe, lr=2e-3), log=None, resume=tmp_path / "c1")
