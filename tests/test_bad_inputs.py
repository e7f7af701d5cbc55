"""Bad-input corpus (issue 8): each bad file, spec, shape, dtype, empty data set or option raises a
``MechError`` subclass whose message names the fix; through the command line (``mech.cli.main``
returns 1 and prints the error) no result file is left in ``--out``.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mech
import mech.cli
from mech.conditions import condition_inputs
from mech.curves import modality_contributions
from mech.curves.ratio import imbalance
from mech.errors import ConfigError, DataError, InputError, SpecError
from mech.measure.dla import direct_logit_attribution
from mech.measure.knockout import attention_knockout
from mech.measure.patching import activation_patching
from mech.measure.patching.attribution import attribution_patching
from mech.prepare.data import load_data
from mech.testing.tiny import save_tiny, tiny_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    save_tiny("llava", root / "model")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(root / "im.png")
    good = {
        "id": "a",
        "question": "what colour is the shape ?",
        "image": "im.png",
        "options": ["red", "blue"],
        "answer": "A",
    }
    (root / "good.jsonl").write_text("".join(json.dumps(dict(good, id=f"g{i}")) + "\n" for i in range(3)))
    (root / "one.jsonl").write_text(json.dumps(good) + "\n")
    (root / "empty.jsonl").write_text("")
    (root / "notjson.jsonl").write_text(json.dumps(good) + "\nthis is not json\n")
    (root / "notimage.txt").write_text("hello")
    (root / "badimage.jsonl").write_text(json.dumps(dict(good, image="notimage.txt")) + "\n")
    (root / "noimage.jsonl").write_text(json.dumps({k: v for k, v in good.items() if k != "image"}) + "\n")
    (root / "afile").write_text("x")
    (root / "noparquet").mkdir()
    (root / "cols").mkdir()
    pd.DataFrame({"id": ["1"], "question": ["q"]}).to_parquet(root / "cols" / "x.parquet")
    return root


def _cli(files, tmp_path, command, model=None, data=None, extra=()):
    model = model or str(files / "model")
    data = data or f"jsonl:{files / 'good.jsonl'}"
    out = tmp_path / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = mech.cli.main([command, "--model", model, "--data", data, "--out", str(out), *extra])
    return rc, err.getvalue(), out


# (id, command, model, data (with {root}), extra flags, phrase of the fix)
CLI_CASES = [
    ("model-missing", "attention", "{root}/nope", None, [], "does not exist; pass an existing directory"),
    ("model-is-file", "attention", "{root}/afile", None, [], "pass the directory holding config.json"),
    ("organism-unknown", "attention", "organism:nope", None, [], "valid names"),
    ("data-scheme", "eval", None, "csv:{root}/x.csv", [], "use one of organism:shapes"),
    ("jsonl-missing", "eval", None, "jsonl:{root}/none.jsonl", [], "pass jsonl:<path"),
    ("jsonl-empty-eval", "eval", None, "jsonl:{root}/empty.jsonl", [], "at least one valid sample"),
    ("jsonl-empty-attention", "attention", None, "jsonl:{root}/empty.jsonl", [], "at least one valid sample"),
    ("jsonl-empty-patch", "patch", None, "jsonl:{root}/empty.jsonl", [], "at least one valid sample"),
    ("jsonl-empty-report", "report", None, "jsonl:{root}/empty.jsonl", [], "at least one valid sample"),
    ("jsonl-all-images-bad", "attention", None, "jsonl:{root}/badimage.jsonl", [], "pass a PNG/JPEG file"),
    ("n-zero", "eval", None, None, ["--n", "0"], "pass a positive integer"),
    ("n-zero-report", "report", None, None, ["--n", "0"], "pass a positive integer"),
    ("batch-size-zero", "attention", None, None, ["--batch-size", "0"], "pass a positive integer"),
    ("mmmu-no-parquet", "eval", None, "mmmu-pro:{root}/noparquet", [], "Pass a directory holding *.parquet"),
    ("mmmu-columns", "eval", None, "mmmu-pro:{root}/cols", [], "lacks the MMMU-Pro columns"),
    ("condition", "eval", None, None, ["--conditions", "complete,sepia"], "allowed: complete"),
    ("corruption", "patch", None, None, ["--corruption", "sepia"], "allowed: complete"),
    ("site", "patch", None, None, ["--sites", "resid_side"], "allowed: resid_pre"),
    ("positions", "patch", None, None, ["--positions", "elsewhere"], "allowed: image"),
    ("query", "attention", None, None, ["--query", "first"], "allowed: last"),
    ("estimator", "contrib", None, None, ["--estimators", "vibes"], "allowed: attention"),
    ("dtype", "attention", None, None, ["--dtype", "float8"], "allowed: float32"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_with_the_fix_and_writes_nothing(files, tmp_path, case):
    _, command, model, data, extra, phrase = case

    def fmt(s):
        return s.format(root=files) if s else s

    rc, err, out = _cli(files, tmp_path, command, fmt(model), fmt(data), [fmt(e) for e in extra])
    assert rc == 1, err[-500:]
    assert f"mech {command}: error:" in err and phrase in err, err[-500:]
    left = [p.name for p in out.glob("*") if p.suffix in (".json", ".safetensors")] if out.exists() else []
    assert left == [], left
    assert not list(out.rglob("*.tmp")) if out.exists() else True


@pytest.fixture(scope="module")
def llava():
    m = mech.load(tiny_model("llava"))
    img = Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8))
    samples = [
        dict(id=f"s{i}", question=q, images=[img], options=["red", "blue"], answer="A", prompt_style="bare")
        for i, q in enumerate(["what colour is the shape ?", "which shape ?"])
    ]
    return m, samples, condition_inputs(m, samples, "complete"), condition_inputs(m, samples, "white_image")


A, C = torch.tensor([100, 101]), torch.tensor([102, 103])
BIG = torch.tensor([100, 10**6])

# (id, call(m, samples, clean, corrupted, root), error class, phrase of the fix)
API_CASES = [
    (
        "site",
        lambda m, s, c, k, r: activation_patching(m, c, k, sites="resid_side"),
        ConfigError,
        "valid sites",
    ),
    (
        "metric",
        lambda m, s, c, k, r: activation_patching(m, c, k, metric="accuracy"),
        ConfigError,
        "valid metrics",
    ),
    (
        "direction",
        lambda m, s, c, k, r: activation_patching(m, c, k, direction="sideways"),
        ConfigError,
        "valid: denoising",
    ),
    ("query", lambda m, s, c, k, r: mech.attention_mass(m, c, query="first"), ConfigError, "allowed: last"),
    (
        "hook-name",
        lambda m, s, c, k, r: mech.run_with_hooks(m, c, [("blocks.0.hook_nope", lambda x, h: x)]),
        ConfigError,
        "valid: hook_embed",
    ),
    (
        "hook-layer",
        lambda m, s, c, k, r: mech.run_with_cache(m, c, ["blocks.9.hook_resid_post"]),
        ConfigError,
        "this model has layers 0..1",
    ),
    (
        "patch-layer",
        lambda m, s, c, k, r: activation_patching(m, c, k, layers=[5]),
        ConfigError,
        "layers 0..1",
    ),
    (
        "knockout-layer",
        lambda m, s, c, k, r: attention_knockout(m, c, layers=[-1]),
        ConfigError,
        "layers 0..1",
    ),
    (
        "answer-shape-patch",
        lambda m, s, c, k, r: activation_patching(m, c, k, answer=A[:1], counterfactual=C),
        InputError,
        "LongTensor [batch=2]",
    ),
    (
        "answer-vocab-patch",
        lambda m, s, c, k, r: activation_patching(m, c, k, answer=BIG, counterfactual=C),
        InputError,
        "outside the vocabulary",
    ),
    (
        "answer-vocab-atp",
        lambda m, s, c, k, r: attribution_patching(m, c, k, answer=A, counterfactual=BIG),
        InputError,
        "outside the vocabulary",
    ),
    (
        "answer-shape-knockout",
        lambda m, s, c, k, r: attention_knockout(m, c, answer=A[None]),
        InputError,
        "LongTensor [batch=2]",
    ),
    (
        "answer-vocab-knockout",
        lambda m, s, c, k, r: attention_knockout(m, c, answer=BIG),
        InputError,
        "outside the vocabulary",
    ),
    (
        "answer-vocab-dla",
        lambda m, s, c, k, r: direct_logit_attribution(m, c, BIG, C),
        InputError,
        "token ids < ",
    ),
    (
        "input-ids-1d",
        lambda m, s, c, k, r: mech.attention_mass(m, {"input_ids": c["input_ids"][0]}),
        InputError,
        "must be [batch, pos]",
    ),
    (
        "images-vs-placeholders",
        lambda m, s, c, k, r: m.prepare([[s[0]["images"][0]] * 2], ["<image> what ?"]),
        InputError,
        "give one image per placeholder",
    ),
    (
        "image-not-an-image",
        lambda m, s, c, k, r: m.prepare([str(r / "notimage.txt")], ["what ?"]),
        InputError,
        "pass a PNG/JPEG file",
    ),
    (
        "padding-side",
        lambda m, s, c, k, r: m.prepare(s[0]["images"], ["what ?"], padding_side="middle"),
        ConfigError,
        "allowed: 'left', 'right'",
    ),
    (
        "dtype",
        lambda m, s, c, k, r: mech.load(tiny_model("llava"), dtype="float8"),
        ConfigError,
        "allowed: float32",
    ),
    (
        "attn-implementation",
        lambda m, s, c, k, r: mech.load(tiny_model("llava"), attn_implementation="fast"),
        ConfigError,
        "allowed: eager, sdpa",
    ),
    (
        "mismatched-groups",
        lambda m, s, c, k, r: activation_patching(
            m, c, condition_inputs(m, s, "no_image"), align_mode="strict"
        ),
        InputError,
        "align='group'",
    ),
    (
        "mismatched-rows",
        lambda m, s, c, k, r: activation_patching(m, c, condition_inputs(m, s[:1], "white_image")),
        InputError,
        "same samples in the same order",
    ),
    (
        "estimator",
        lambda m, s, c, k, r: modality_contributions(m, c, A, C, estimators=["vibes"]),
        ConfigError,
        "allowed: attention",
    ),
    (
        "bootstrap-one-sample",
        lambda m, s, c, k, r: imbalance(torch.rand(1, 2, len(mech.GROUPS)), mech.GROUPS, pool="mean"),
        InputError,
        "pass more samples",
    ),
    (
        "jsonl-strict",
        lambda m, s, c, k, r: load_data(f"jsonl:{r / 'notjson.jsonl'}", strict=True),
        DataError,
        "Fix or remove the row",
    ),
    (
        "jsonl-empty",
        lambda m, s, c, k, r: load_data(f"jsonl:{r / 'empty.jsonl'}"),
        DataError,
        "at least one valid sample",
    ),
    (
        "n-zero",
        lambda m, s, c, k, r: load_data(f"jsonl:{r / 'good.jsonl'}", n=0),
        ConfigError,
        "positive number of samples",
    ),
    ("data-scheme", lambda m, s, c, k, r: load_data("hf:foo"), SpecError, "use one of organism:shapes"),
    ("condition", lambda m, s, c, k, r: condition_inputs(m, s, "sepia"), ConfigError, "allowed: complete"),
    (
        "condition-needs-image",
        lambda m, s, c, k, r: condition_inputs(
            m, load_data(f"jsonl:{r / 'noimage.jsonl'}").samples, "white_image"
        ),
        InputError,
        "drop the sample or use one of",
    ),
    (
        "knockout-window",
        lambda m, s, c, k, r: attention_knockout(m, c, window=0),
        ConfigError,
        "number of layers",
    ),
    (
        "knockout-edge",
        lambda m, s, c, k, r: attention_knockout(m, c, edges=[("pixels", "last")]),
        ConfigError,
        "source must be one of",
    ),
    ("not-a-mapping", lambda m, s, c, k, r: mech.attention_mass(m, [1, 2, 3]), InputError, "use m.prepare"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_with_the_fix(llava, files, case):
    _, call, error, phrase = case
    m, samples, clean, corrupted = llava
    with pytest.raises(error) as info:
        call(m, samples, clean, corrupted, files)
    assert isinstance(info.value, mech.MechError)
    assert phrase in str(info.value), str(info.value)


def test_corpus_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) >= 20 and len(CLI_CASES) >= 20


def test_contrib_on_one_sample_gives_estimates_without_an_interval(files, tmp_path):
    """One sample has a point estimate but no bootstrap interval: contrib completes (a report on a small
    data set must not stop at its last step) and says so, with ``ci95`` null, never a made-up interval."""
    rc, err, out = _cli(files, tmp_path, "contrib", data=f"jsonl:{files / 'one.jsonl'}")
    assert rc == 0, err[-500:]
    co = json.loads((out / "contrib.json").read_text())
    assert co["n"] == 1
    for est, o in co["overall"].items():
        assert o["ci95"] in (None, [None, None]), (est, o)
