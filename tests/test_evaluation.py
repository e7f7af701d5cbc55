"""Missing-modality evaluation (issue 4): consistency table by hand, option scoring against HF
logits, generation batching and parsing, skips, resumability, ``mech eval`` outputs, organisms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech.conditions import condition_inputs
from mech.errors import ConfigError, DataError, RunConflictError
from mech.measure.evaluation import (
    EvalJob,
    accuracy_table,
    consistency_table,
    evaluate,
    generate_batch,
    parse_multi_choice_response,
    parse_response,
    read_response,
    score_batch,
)
from mech.measure.evaluation import run as run_mod
from mech.prepare.data import Dataset, load_data
from mech.results import read_json, read_tensors
from mech.runs import EvalSettings, run, run_settings
from mech.testing.tiny import tiny_model

IMG = [
    Image.fromarray(np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)) for k in range(4)
]
QUESTIONS = [
    "what colour is the shape ?",
    "how many shapes are there ?",
    "what shape is on the left ?",
    "is there a red circle ?",
]


def mc_samples(n=6):
    return [
        {
            "id": f"q{i}",
            "question": QUESTIONS[i % 4],
            "images": [IMG[i % 4]],
            "options": ["red", "blue", "green", "yellow"][: 2 + i % 3],
            "answer": "AB"[i % 2],
            "prompt_style": "direct",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def llava():
    model, proc = tiny_model("llava")
    return mech.load((model, proc))


def test_consistency_table_by_hand():
    preds = {
        "complete": ["A", "B", "C", "D", "A", None],
        "white_image": ["A", "B", "D", "D", "B", None],
        "image_only": ["A", "C", "C", "D", "A", None],
    }
    gold = ["A", "B", "C", "A", "B", "A"]
    correct = [p == g for p, g in zip(preds["complete"], gold)]  # samples 0, 1, 2 correct
    t = consistency_table(preds, correct)
    expected = {  # (consistent, total) worked out on paper
        "all": {
            "complete&white_image": (3, 6),
            "complete&image_only": (4, 6),
            "white_image&image_only": (2, 6),
            "all": (2, 6),
        },
        "correct": {
            "complete&white_image": (2, 3),
            "complete&image_only": (2, 3),
            "white_image&image_only": (1, 3),
            "all": (1, 3),
        },
        "wrong": {
            "complete&white_image": (1, 3),
            "complete&image_only": (2, 3),
            "white_image&image_only": (1, 3),
            "all": (1, 3),
        },
    }
    for subset, rows in expected.items():
        for key, (num, total) in rows.items():
            cell = t[subset][key]
            assert (cell["num"], cell["total"], cell["inconsistent_num"]) == (num, total, total - num)
            assert cell["pct"] == pytest.approx(100 * num / total)
            assert cell["inconsistent_pct"] == pytest.approx(100 * (total - num) / total)
    empty = consistency_table({"complete": ["A"], "white_image": ["A"]}, [True])
    assert (
        empty["wrong"]["complete&white_image"]["pct"] is None and empty["all"]["complete&image_only"] is None
    )
    acc = accuracy_table({"complete": [True, True, False, False], "white_image": [True, False, False, False]})
    assert acc["complete"]["accuracy"] == 0.5 and acc["white_image"]["drop"] == pytest.approx(0.25)


def test_parse_multi_choice_response():
    ch = ["A", "B", "C", "D"]
    opts = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
    assert parse_multi_choice_response("B", ch) == "B"
    assert parse_multi_choice_response("(C)", ch) == "C"
    assert parse_multi_choice_response("The answer is (D).", ch) == "D"
    assert parse_multi_choice_response("A. red", ch) == "A"
    assert parse_multi_choice_response("Let's think. A is wrong, so B or C. Answer: C", ch) == "C"
    assert parse_multi_choice_response("Answer: (B)\nAnswer: D", ch) == "D"
    assert (
        parse_multi_choice_response("I think the colour of the shape is clearly green here", ch, opts) == "C"
    )
    assert parse_multi_choice_response("maybe A or maybe B", ch) == "B"  # the last one mentioned
    assert parse_multi_choice_response("Answer: E", ch) is None  # outside the options
    assert parse_multi_choice_response("no idea", ch) is None and parse_multi_choice_response("", ch) is None
    s = {"options": ["red", "blue"], "answer": "B"}
    assert parse_response("blue", s) == "B" and parse_response("red circle", s) == "A"
    assert parse_response("Answer: a square.", {"options": [], "answer": "a square"}) == "square"


def test_score_batch_matches_hf_logits(llava):
    samples = mc_samples(4)
    inputs = condition_inputs(llava, samples, "complete")
    got = score_batch(llava, inputs, samples, "letter")
    with torch.no_grad():
        logits = llava.model(**llava.inputs(inputs)).logits
    mask = inputs["attention_mask"]
    last = (torch.arange(mask.shape[1]) * mask).argmax(1)  # last real token, independent of groups
    tok = llava.tokenizer
    for i, s in enumerate(samples):
        ids = [tok.convert_tokens_to_ids(x) for x in "ABCD"[: len(s["options"])]]
        ref = torch.log_softmax(logits[i, last[i]], -1)[ids]
        torch.testing.assert_close(torch.tensor(got[i]["scores"]), ref)
        assert got[i]["pred"] == "ABCD"[int(ref.argmax())]
    one = score_batch(llava, condition_inputs(llava, samples[2:3], "complete"), samples[2:3], "letter")
    torch.testing.assert_close(
        torch.tensor(one[0]["scores"]), torch.tensor(got[2]["scores"]), atol=1e-5, rtol=1e-5
    )
    text = score_batch(llava, inputs, samples, "option_text")
    for i, s in enumerate(samples):
        ids = [tok.convert_tokens_to_ids(o) for o in s["options"]]
        torch.testing.assert_close(
            torch.tensor(text[i]["scores"]), torch.log_softmax(logits[i, last[i]], -1)[ids]
        )


def test_generation_batched_equals_single(llava):
    samples = mc_samples(3)
    batched = generate_batch(llava, condition_inputs(llava, samples, "complete", padding_side="left"), 6)
    single = [
        generate_batch(llava, condition_inputs(llava, [s], "complete", padding_side="left"), 6)[0]
        for s in samples
    ]
    assert batched == single and len(batched) == 3
    assert all(len(llava.tokenizer.encode(r, add_special_tokens=False)) <= 6 for r in batched)
    r = evaluate(
        llava,
        samples,
        conditions=["complete", "white_image", "image_only"],
        method="cot",
        max_new_tokens=5,
        progress=False,
    )
    assert r["settings"]["style"] == "cot" and r["settings"]["max_new_tokens"] == 5
    assert len(r["responses"]["complete"]) == 3
    assert r["predictions"]["complete"] == [
        parse_response(x, s) for x, s in zip(r["responses"]["complete"], samples)
    ]
    assert r["settings"]["parser"] == "official"
    guessed = [read_response(x, s)[1] for x, s in zip(r["responses"]["complete"], samples)]
    assert r["guessed"]["complete"] == sum(guessed)
    strict = evaluate(
        llava,
        samples,
        conditions=["complete"],
        method="cot",
        max_new_tokens=5,
        parser="strict",
        progress=False,
    )
    assert strict["predictions"]["complete"] == [
        parse_response(x, s, "strict") for x, s in zip(strict["responses"]["complete"], samples)
    ]
    assert strict["guessed"]["complete"] == 0 and strict["settings"]["parser"] == "strict"
    with pytest.raises(ConfigError, match="official, strict"):
        evaluate(llava, samples, conditions=["complete"], method="cot", parser="lenient", progress=False)


def test_evaluate_reports_every_skip(llava):
    samples = mc_samples(5)
    samples[1] = dict(samples[1], images=[])
    samples[3] = dict(samples[3], options=["red", "red dog"])  # option texts share their first token
    data = Dataset(
        "toy", samples, skipped=[("bad-row", "corrupt image bytes in image_1")], scoring="option_text"
    )
    r = evaluate(
        llava, data, conditions=["complete", "white_image", "image_only", "no_image"], progress=False
    )
    assert r["ids"] == ["q0", "q2", "q4"]
    assert r["skipped"]["count"] == 3
    items = {x["id"]: x for x in r["skipped"]["items"]}
    assert items["bad-row"]["stage"] == "data" and "no image" in items["q1"]["reason"]
    assert "share a first token" in items["q3"]["reason"]
    assert all(len(v) == 3 for v in r["predictions"].values())
    assert all(r["conditions"][c]["n"] == 3 for c in r["conditions"])
    only_text = evaluate(llava, samples[1:2], conditions=["complete", "no_image"], progress=False)
    assert only_text["skipped"]["count"] == 0  # no image condition asked: the sample is usable
    with pytest.raises(DataError, match="no image"):
        evaluate(llava, samples[1:2], progress=False)
    ten = [dict(samples[0], options=[f"o{k}" for k in range(10)])]
    with pytest.raises(ConfigError, match="option letters"):  # the tiny vocabulary stops at F
        evaluate(llava, ten, conditions=["complete"], scoring="letter", progress=False)
    with pytest.raises(ConfigError, match="visual_mean"):
        evaluate(llava, samples, conditions=["complete", "sepia"], progress=False)


def _jsonl(tmp_path, rows, name="data.jsonl"):
    IMG[0].save(tmp_path / "a.png")
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f"jsonl:{path}"


def test_resume_after_interruption_is_identical(llava, tmp_path, monkeypatch):
    """mech eval on the run loop: killed after 2 of 3 batches, rerun computes only the third and
    writes the bytes of an uninterrupted run; settings that differ refuse the folder."""
    rows = [
        {
            "id": f"q{i}",
            "question": QUESTIONS[i % 4],
            "image": "a.png",
            "options": ["red", "blue", "green"],
            "answer": "ABC"[i % 3],
        }
        for i in range(5)
    ]
    data = _jsonl(tmp_path, rows)
    settings = EvalSettings(
        model="tiny-llava",
        data=data,
        n=5,
        conditions=("complete", "white_image", "visual_noise"),
        batch_size=2,
        seed=5,
        progress=False,
        out=str(tmp_path / "a"),
    )
    full = run(EvalJob(settings), model=llava)
    assert full["ids"] == [f"q{i}" for i in range(5)]
    # the same answers as the in-memory evaluate()
    mem = evaluate(
        llava, load_data(data, n=5), conditions=settings.conditions, batch_size=2, seed=5, progress=False
    )
    assert mem["predictions"] == full["predictions"] and mem["scores"] == full["scores"]
    calls = {"n": 0}
    real = run_mod._answer_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:  # 3 conditions x 2 batches
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "_answer_batch", flaky)
    b = settings.replace(out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        run(EvalJob(b), model=llava)
    assert len(list((tmp_path / "b" / ".eval.parts").glob("*.safetensors"))) == 2
    assert not (tmp_path / "b" / "eval.json").exists()
    calls["n"] = -100
    run(EvalJob(b), model=llava)
    assert calls["n"] == -100 + 3  # only the unfinished batch ran, under its 3 conditions
    for name in ("eval.json", "eval.md", "eval.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    calls["n"] = -100
    run(EvalJob(b), model=llava)
    assert calls["n"] == -100  # everything finished: nothing recomputed
    with pytest.raises(RunConflictError, match="seed: 5 there, 6 here"):
        run(EvalJob(b.replace(seed=6)), model=llava)
    other = run(EvalJob(b.replace(seed=6, overwrite=True)), model=llava)
    assert calls["n"] == -100 + 9 and other["settings"]["seed"] == 6


def test_cmd_eval_writes_tables_and_figure(llava, tmp_path, monkeypatch):
    path = tmp_path / "data.jsonl"
    IMG[0].save(tmp_path / "a.png")
    rows = [
        {
            "id": f"r{i}",
            "question": QUESTIONS[i % 4],
            "image": "a.png",
            "options": ["red", "blue", "green"],
            "answer": "ABC"[i % 3],
        }
        for i in range(5)
    ] + [{"id": "bad", "question": "?", "image": "a.png", "options": ["x", "y"], "answer": "D"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(mech, "load", lambda *a, **k: llava)
    result = run_settings(
        EvalSettings(
            model="tiny-llava", data=f"jsonl:{path}", out=str(tmp_path / "out"), batch_size=2, progress=False
        )
    )
    out = tmp_path / "out"
    js = read_json(out / "eval.json")
    assert js["model"] == "tiny-llava" and js["data"] == f"jsonl:{path}" and js["figures"] == ["eval.png"]
    for c in ("complete", "white_image", "image_only", "no_image", "black_image", "noise_image"):
        assert 0.0 <= js["conditions"][c]["accuracy"] <= 1.0 and js["conditions"][c]["n"] == 5
    for subset in ("all", "correct", "wrong"):
        for key in ("complete&white_image", "complete&image_only", "white_image&image_only", "all"):
            assert set(js["consistency"][subset][key]) >= {"num", "pct"}
    assert js["skipped"]["count"] == 1 and "outside the options" in js["skipped"]["items"][0]["reason"]
    assert js["settings"]["chance"] == pytest.approx(1 / 3)
    md = (out / "eval.md").read_text()
    assert "Text w/ white" in md and "Complete & Text-only" in md and "Inconsistent" in md and "1 ×" in md
    t = read_tensors(out / "eval.safetensors")
    assert t["pred_index"].shape == (5, 6) and t["scores"].shape == (5, 6, 3)
    assert t["correct"].sum().item() == sum(sum(v) for v in result["correct"].values())
    assert Image.open(out / "eval.png").size[0] > 800
    assert len(list((out / ".eval.parts").glob("*.safetensors"))) == 3  # the run loop's parts: 6 rows / 2


def _organism_ready(name):
    from mech.organisms import organism_dir

    try:
        organism_dir(name)
        return True
    except mech.MechError:
        return False


@pytest.mark.skipif(
    not (_organism_ready("balanced") and _organism_ready("text-biased")),
    reason="organism weights not built yet (python -m mech.organisms.train NAME)",
)
def test_text_biased_organism_is_more_consistent_without_the_image():
    data = load_data("organism:shapes", n=300, seed=0)
    conds = ["complete", "white_image", "image_only"]
    res = {
        name: evaluate(mech.load(f"organism:{name}"), data, conditions=conds, batch_size=64, progress=False)
        for name in ("balanced", "text-biased")
    }
    pct = {k: r["consistency"]["all"]["complete&white_image"]["pct"] for k, r in res.items()}
    acc = {k: r["conditions"]["complete"]["accuracy"] for k, r in res.items()}
    print("complete&white_image consistency %:", pct, "complete accuracy:", acc)
    assert pct["text-biased"] > pct["balanced"]
    assert acc["balanced"] > 0.4  # the balanced organism reads the image (chance: 0.25)


def test_model_fingerprint_follows_the_weights_not_the_folder(tmp_path):
    """The same weights saved in two folders have one fingerprint (the config's ``_name_or_path`` is
    the folder); a changed first-parameter weight changes it."""
    from transformers import LlavaForConditionalGeneration

    from mech.measure.evaluation.run import model_fingerprint

    model = mech.load("organism:balanced").model
    a, b = tmp_path / "a", tmp_path / "nested" / "b"
    model.save_pretrained(a)
    model.save_pretrained(b)
    ma, mb = (LlavaForConditionalGeneration.from_pretrained(d) for d in (a, b))
    assert ma.config._name_or_path != mb.config._name_or_path
    assert model_fingerprint(ma) == model_fingerprint(mb)
    with torch.no_grad():
        next(mb.parameters()).view(-1)[0] += 1.0
    assert model_fingerprint(ma) != model_fingerprint(mb)
