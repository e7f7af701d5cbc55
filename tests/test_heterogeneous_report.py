"""``mech report`` on data shaped like MMMU-Pro (issue 22): every image its own size, questions of 8 to
40 words, one to three images per row, written as parquet rows in the real MMMU-Pro schema, on tiny
random models of every decoder-sequence family saved to disk and loaded by path.

What must hold: the report completes, and every estimator (attention, patching, dla, decomposition) has
an estimate for at least 95% of the samples (``contrib.json`` → ``overall.<estimator>.coverage``), with no
identical donor where the data set has other content. Before issue 22 the removal estimators bucketed
donors by exact image sizes and word count, so almost no sample of such data had a donor and the report
stopped ("only 1 sample(s) have text and image contributions").

Oracle for the image removal: the resampled forward equals the plain forward of the hand-built sample
with the donor's images resized (PIL, bicubic) to the sample's sizes, cyclically.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mech
from mech.testing.tiny import FAMILIES, save_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: decoder-sequence families (images are decoder tokens; mllama's cross-attention is refused by design,
#: qwen2_audio has no images)
DECODER = tuple(f for f in FAMILIES if f not in ("mllama", "qwen2_audio"))
WORDS = (
    "what",
    "is",
    "shown",
    "in",
    "the",
    "figure",
    "which",
    "color",
    "shape",
    "left",
    "right",
    "of",
    "a",
    "and",
    "how",
    "many",
    "are",
    "there",
    "value",
    "best",
    "describes",
    "chart",
    "table",
    "label",
)
N_ROWS = 12


def _png(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    w, h = size
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def mmmu_pro_rows(n: int = N_ROWS, seed: int = 0) -> list[dict]:
    """``n`` rows of MMMU-Pro ``standard (4 options)``: every image its own size (16..80 px a side, aspect
    ratios apart), one to three images per row mentioned as ``<image k>``, questions of 8 to 40 words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = 1 + i % 3
        length = int(rng.integers(8, 41))
        words = [str(w) for w in rng.choice(WORDS, size=length - k)]
        for j in range(k):  # the image mentions count as words of the question
            words.insert(int(rng.integers(0, len(words) + 1)), f"<image {j + 1}>")
        row = {
            "id": f"validation_Art_{i}",
            "question": " ".join(words) + " ?",
            "options": str(["red", "blue", "green", "circle"]),
            "explanation": "",
            **{f"image_{c}": None for c in range(1, 8)},
            "img_type": "['Photographs']",
            "answer": "ABCD"[i % 4],
            "topic_difficulty": "Easy",
            "subject": ("Art", "Math")[i % 2],
        }
        for j in range(k):
            size = (int(rng.integers(16, 81)), int(rng.integers(16, 81)))
            row[f"image_{j + 1}"] = {"bytes": _png(rng, size), "path": f"{i}_{j}.png"}
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mmmu_pro")
    pd.DataFrame(mmmu_pro_rows()).to_parquet(folder / "test-00000-of-00001.parquet")
    return folder


def test_the_rows_are_heterogeneous(data_dir):
    from mech.prepare.data import load_data

    samples = list(load_data(f"mmmu-pro:{data_dir}", n=N_ROWS))
    assert len(samples) == N_ROWS
    sizes = [tuple(im.size for im in s["images"]) for s in samples]
    assert len(set(sizes)) == N_ROWS  # no two samples share their image sizes
    assert {len(s["images"]) for s in samples} == {1, 2, 3}
    assert len({len(s["question"].split()) for s in samples}) >= N_ROWS // 2


#: families whose processor refuses a prompt without images: eval reports ``no_image`` as unavailable
TEXT_ONLY_REFUSED = ("paligemma",)
#: families whose tiny model embeds every image alike: an image donor is identical by construction there
#: (none since mech.testing.tiny randomises the weight matrices a family initialises to zero)
CONSTANT_IMAGE: tuple[str, ...] = ()


def _run(command: str, family: str, data_dir, tmp_path) -> int:
    import mech.cli

    folder = save_tiny(family, tmp_path / family)
    argv = [
        command,
        "--model",
        str(folder),
        "--data",
        f"mmmu-pro:{data_dir}",
        "--n",
        str(N_ROWS),
        "--batch-size",
        "6",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    return mech.cli.main(argv)


@pytest.mark.parametrize("family", DECODER)
def test_report_on_heterogeneous_rows_covers_every_sample(family, data_dir, tmp_path):
    assert _run("report", family, data_dir, tmp_path) == 0
    out = tmp_path / "out"
    co = json.loads((out / "contrib.json").read_text())
    n = co["n"]
    assert n >= 0.95 * N_ROWS  # rows the model cannot take are skipped and counted, not silently lost
    for est in ("attention", "patching", "dla", "decomposition"):
        cov = co["overall"][est]["coverage"]
        assert cov["n"] == n and cov["coverage"] >= 0.95, (est, cov)
        assert len(cov["missing"]) == n - cov["n_estimated"]
        assert all(m["reason"] for m in cov["missing"])
    for est in ("patching", "decomposition"):  # every row has its own image pixels and question words
        same = co["overall"][est]["identical_donor"]
        assert same["text"] == 0.0
        assert same["image"] == (1.0 if family in CONSTANT_IMAGE else 0.0), same
    assert "coverage | identical donor |" in (out / "report.md").read_text()
    ev = json.loads((out / "eval.json").read_text())
    if family in TEXT_ONLY_REFUSED:  # reported as not measured, with the processor's reason; the rest runs
        assert "no_image" not in ev["conditions"] and "without images" in ev["unavailable"]["no_image"]
    else:
        assert ev["unavailable"] == {} and ev["conditions"]["no_image"]["n"] == n


@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl", "qwen3_vl"])
def test_image_donor_is_the_forward_of_the_resized_donor_images(family, data_dir, tmp_path):
    """Oracle: resample ablation of the image group with the paired donors equals the plain forward of
    each sample with the donor's images resized by hand to the sample's own sizes (k-th image from donor
    image k mod n); the token grid (dynamic resolution, any-resolution tiles) is unchanged. On qwen3_vl the
    deepstack features (added after early layers) are resampled too, so the same oracle holds."""
    from mech.conditions import condition_inputs, resample_features
    from mech.curves.donors import donor_batch, pair_donors
    from mech.prepare.data import load_data

    m = mech.load(str(save_tiny(family, tmp_path / family)))
    samples = list(load_data(f"mmmu-pro:{data_dir}", n=N_ROWS))
    pairs = pair_donors(samples, "image")
    rows = list(range(6))
    donor_inputs, ok, reason = donor_batch(m, samples, pairs, rows, "image")
    assert ok.all() and (reason == 0).all()
    clean = condition_inputs(m, [samples[i] for i in rows], "complete")
    mixed = []
    for i in rows:
        theirs = samples[pairs[i]]["images"]
        mixed.append(
            {
                **samples[i],
                "images": [
                    theirs[k % len(theirs)].convert("RGB").resize(im.size, Image.BICUBIC)
                    for k, im in enumerate(samples[i]["images"])
                ],
            }
        )
    want = m.logits(condition_inputs(m, mixed, "complete"))
    with resample_features(m, clean, donor_inputs, groups=("image",), rows=ok):
        got = m.logits(clean)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_noise_removal_stays_an_option(data_dir, tmp_path):
    """``--removal noise`` needs no donor: every sample is estimated, and no removal leaves its input unchanged."""
    import mech.cli

    folder = save_tiny("qwen2_5_vl", tmp_path / "qwen2_5_vl")
    argv = [
        "contrib",
        "--model",
        str(folder),
        "--data",
        f"mmmu-pro:{data_dir}",
        "--n",
        str(N_ROWS),
        "--batch-size",
        "6",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        "--removal",
        "noise",
        "--estimators",
        "patching",
        "decomposition",
    ]
    assert mech.cli.main(argv) == 0
    co = json.loads((tmp_path / "out" / "contrib.json").read_text())
    assert co["corruption"] == "noise"
    for est in ("patching", "decomposition"):
        assert co["overall"][est]["coverage"]["coverage"] == 1.0
        assert set(co["overall"][est].get("identical_donor", {}).values()) <= {0.0}


def test_a_row_without_a_decision_is_skipped_by_patch_and_contrib(tmp_path):
    """A row the official MMMU-Pro code keeps although its gold letter lies beyond its options (real:
    ``validation_Accounting_29``, one option, gold ``B``) has no logit difference to explain: patch and
    contrib skip it with the reason and measure the others exactly as without it."""
    import mech.cli

    rows = mmmu_pro_rows(6)
    rows[2] = {**rows[2], "options": str([["A", "B", "Not enough information"]]), "answer": "B"}
    rows[3] = {**rows[3], "options": str(["red", "blue"]), "answer": "D"}
    folder = tmp_path / "data"
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "test-00000-of-00001.parquet")
    model = save_tiny("qwen2_5_vl", tmp_path / "qwen2_5_vl")
    for command in ("patch", "contrib"):
        out = tmp_path / command
        argv = [
            command,
            "--model",
            str(model),
            "--data",
            f"mmmu-pro:{folder}",
            "--n",
            "6",
            "--batch-size",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
        assert mech.cli.main(argv) == 0
        result = json.loads((out / f"{command}.json").read_text())
        items = {x["id"]: x["reason"] for x in result["skipped"]["items"]}
        assert "1 option; a logit difference between options needs at least two" in items[rows[2]["id"]], (
            items
        )
        assert "gold answer 'D' is not one of its 2 option letters" in items[rows[3]["id"]], items
        assert result["n"] == 4  # the other rows, all measured
