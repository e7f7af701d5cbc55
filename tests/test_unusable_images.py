"""One unusable image never ends a run (issue 23, item 4).

A row whose image the processor refuses (Qwen2-VL's ``smart_resize``: an aspect ratio over 200, here a
600×2 image) is skipped with a reason that names the image, its size and the processor's limit, by every
command, and the other rows give what they give without it. The oracle for the refusal is transformers'
own image processor on that image alone; the oracle for the rest is the same command on the data set
without the bad row.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mech
import mech.cli
from mech.errors import InputError
from mech.prepare.data import load_data
from mech.prepare.fit import image_refusal, usable_images
from mech.testing.tiny import IMAGE_SIZES, save_tiny, tiny_model

FAMILY = "qwen2_5_vl"
BAD = (600, 2)  # width x height: aspect ratio 300, over Qwen2-VL's limit of 200
COMMANDS = ("eval", "attention", "patch", "contrib")


def _png(size, seed) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(
        buf, format="PNG"
    )
    return buf.getvalue()


def _row(i: int, image: bytes, answer: str) -> dict:
    """One row in MMMU-Pro's standard (10 options) schema."""
    return {
        "id": f"validation_Art_{i}",
        "question": "what colour is the shape in <image 1> ?",
        "options": "['red', 'blue', 'green', 'circle']",
        "explanation": "",
        "image_1": {"bytes": image, "path": f"{i}.png"},
        **{f"image_{k}": None for k in range(2, 8)},
        "img_type": "['Photographs']",
        "answer": answer,
        "topic_difficulty": "Easy",
        "subject": "Art",
    }


def _write(folder, rows) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / "test-00000-of-00001.parquet")
    return f"mmmu-pro:{folder}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("unusable")
    model = str(save_tiny(FAMILY, root / "model"))
    good = [_row(i, _png(IMAGE_SIZES[FAMILY], i), "ABCD"[i % 4]) for i in range(4)]
    bad = _row(9, _png(BAD, 9), "A")
    with_bad = _write(root / "with_bad", good[:2] + [bad] + good[2:])
    without = _write(root / "without", good)
    return root, model, with_bad, without


def test_the_processor_refuses_the_image_alone():
    """The oracle: transformers' image processor raises on the 600x2 image alone and takes the others."""
    _, proc = tiny_model(FAMILY)
    with pytest.raises(ValueError, match="aspect ratio"):
        proc.image_processor(images=[Image.new("RGB", BAD)], return_tensors="pt")
    reason = image_refusal(proc, [Image.new("RGB", IMAGE_SIZES[FAMILY]), Image.new("RGB", BAD)])
    assert reason is not None and "image 2 of 2" in reason and "600x2 pixels" in reason
    assert "aspect ratio must be smaller than 200" in reason
    assert image_refusal(proc, [Image.new("RGB", IMAGE_SIZES[FAMILY])]) is None
    keep, skipped = usable_images(
        proc, [{"id": "a", "images": [Image.new("RGB", BAD)]}, {"id": "b", "images": []}]
    )
    assert [s["id"] for s in keep] == ["b"] and [i for i, _ in skipped] == ["a"]


def test_prepare_names_the_real_cause(world):
    """m.prepare on a batch holding the image says what is wrong with it, not the placeholders."""
    _, model, with_bad, _ = world
    m = mech.load(model)
    data = load_data(with_bad)
    with pytest.raises(InputError) as err:
        m.prepare([s["images"] for s in data], [s["question"] for s in data])
    text = str(err.value)
    assert "prompt 2 of this batch" in text and "600x2 pixels" in text and "smaller than 200" in text
    assert "placeholder" not in text


def _run(command, model, data, out, *extra):
    argv = [
        command,
        "--model",
        model,
        "--data",
        data,
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--no-progress",
        *extra,
    ]
    assert mech.cli.main(argv) == 0, argv
    return json.loads((out / f"{command}.json").read_text())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_skips_the_row_with_its_reason(world, command):
    """Each command completes on a batch holding the bad row, counts it under ``skipped`` with the
    reason, and gives the other rows exactly what the data set without it gives."""
    root, model, with_bad, without = world
    got = _run(command, model, with_bad, root / f"{command}_with")
    want = _run(command, model, without, root / f"{command}_without")
    items = [x for x in got["skipped"]["items"] if x["id"] == "validation_Art_9"]
    assert len(items) == 1, got["skipped"]
    assert (
        "600x2 pixels" in items[0]["reason"] and "aspect ratio must be smaller than 200" in items[0]["reason"]
    )
    assert got["skipped"]["count"] == want["skipped"]["count"] + 1
    strip = ("skipped", "identity", "provenance", "settings", "figures", "wall", "timing", "data")
    assert {k: v for k, v in got.items() if k not in strip} == {
        k: v for k, v in want.items() if k not in strip
    }


def test_report_completes_and_counts_the_row(world):
    root, model, with_bad, _ = world
    out = root / "report"
    assert (
        mech.cli.main(
            [
                "report",
                "--model",
                model,
                "--data",
                with_bad,
                "--out",
                str(out),
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "report.md").is_file()
    for command in COMMANDS:
        result = json.loads((out / f"{command}.json").read_text())
        assert "validation_Art_9" in [x["id"] for x in result["skipped"]["items"]], command
