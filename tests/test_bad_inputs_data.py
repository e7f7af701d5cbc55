"""Bad input and faults in images, data rows and prompts (issue 15): no traceback, no silent number.

Images are read the way transformers' image utilities read them (transparency onto white, EXIF
orientation, 16-bit scaled to 8-bit, float [0, 1] versus uint8); every expectation below is computed
independently with numpy / PIL (or is transformers' own output), never by mech. Unusable data rows
are skipped with their reason; ``m.prepare`` refuses inputs that do not fit the model and warns when
most prompt words are outside its vocabulary.
"""

from __future__ import annotations

import io
import json
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers.image_transforms import convert_to_rgb

import mech
from mech.conditions import apply_condition
from mech.errors import DataError, InputError, MechError
from mech.prepare.data import load_data, skipped_summary
from mech.prepare.images import read_image
from mech.prepare.inputs import FitWarning, check_data_fit
from mech.testing.tiny import IMAGE_SIZES, tiny_model

RNG = np.random.default_rng(15)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # [H, W, 3], asymmetric, so rotations differ
GREY = RNG.integers(0, 256, (6, 8), dtype=np.uint8)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width x height`` pixels (what a decompression bomb says)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def rgba(alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([RGB, alpha.astype(np.uint8)]))


def on_white(alpha01: np.ndarray) -> np.ndarray:
    """numpy oracle for alpha in {0, 255}: transparent pixels white, opaque ones unchanged."""
    return np.where(alpha01[..., None] > 0, RGB, 255).astype(np.uint8)


def exif_bytes(orientation: int) -> bytes:
    """A PNG of RGB with an EXIF orientation tag: the stored pixels are RGB, the shown ones rotated."""
    ex = Image.Exif()
    ex[0x0112] = orientation
    return encode(Image.fromarray(RGB), exif=ex)


def exif_image(orientation: int) -> Image.Image:
    return Image.open(io.BytesIO(exif_bytes(orientation)))


def px(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im)


# ------------------------------------------------------------------------------ images by value

MASK = np.arange(48).reshape(6, 8) % 3 == 0


def test_rgba_transparent_is_white():
    assert np.array_equal(px(read_image(rgba(np.where(MASK, 0, 255)))), on_white(~MASK))


def test_rgba_partial_alpha_equals_transformers():
    im = rgba(RNG.integers(0, 256, (6, 8)))
    assert np.array_equal(px(read_image(im)), convert_to_rgb(im, return_numpy=True))
    assert not np.array_equal(px(read_image(im)), RGB)  # not the alpha band simply dropped


def test_la_transparent_is_white():
    im = Image.fromarray(np.dstack([GREY, np.where(MASK, 0, 255).astype(np.uint8)]))
    assert im.mode == "LA"
    want = np.where(MASK[..., None], 255, np.repeat(GREY[..., None], 3, -1))
    assert np.array_equal(px(read_image(im)), want)


def test_palette_transparency_is_white():
    p = Image.new("P", (3, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putdata([0, 1, 0])
    im = Image.open(io.BytesIO(encode(p, transparency=0)))
    assert np.array_equal(px(read_image(im))[0], [[255, 255, 255], [200, 100, 50], [255, 255, 255]])


@pytest.mark.parametrize("source", ["pil", "png-bytes", "png-file"])
def test_16_bit_equals_its_8_bit_scaling(tmp_path, source):
    im16 = Image.fromarray(GREY.astype(np.uint16) * 257)  # v * 257: the exact 16-bit form of v
    assert im16.mode == "I;16"
    obj = {"pil": im16, "png-bytes": encode(im16)}.get(source)
    if obj is None:
        im16.save(tmp_path / "g16.png")
        obj = tmp_path / "g16.png"
    out = px(read_image(obj))
    assert np.array_equal(out, np.repeat(GREY[..., None], 3, -1))
    assert out.mean() < 250  # Pillow's own convert("RGB") clips to white


def test_16_bit_arbitrary_values_round():
    v = RNG.integers(0, 65536, (5, 7)).astype(np.uint16)
    want = np.floor(v.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    assert np.array_equal(px(read_image(Image.fromarray(v)))[..., 0], want)
    assert np.array_equal(px(read_image(v))[..., 1], want)  # an np.uint16 array reads the same


def test_mode_i_and_f():
    assert np.array_equal(px(read_image(Image.fromarray(GREY.astype(np.int32))))[..., 2], GREY)
    f = Image.fromarray((GREY / 255).astype(np.float32))
    assert f.mode == "F" and np.array_equal(px(read_image(f))[..., 0], GREY)


def test_cmyk_is_pil_conversion():
    im = Image.fromarray(RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8), "RGBA").convert("CMYK")
    assert im.mode == "CMYK" and np.array_equal(px(read_image(im)), np.asarray(im.convert("RGB")))


ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENT))
def test_exif_orientation_applied(orientation):
    assert np.array_equal(px(read_image(exif_image(orientation))), ORIENT[orientation](RGB))


def test_float_array_equals_uint8_image():
    for arr in (RGB / 255, (RGB / 255).astype(np.float32), torch.tensor(RGB / 255).permute(2, 0, 1)):
        assert np.array_equal(px(read_image(arr)), RGB)


def test_array_layouts():
    assert np.array_equal(px(read_image(np.ascontiguousarray(RGB.transpose(2, 0, 1)))), RGB)  # CHW
    assert np.array_equal(px(read_image(GREY)), np.repeat(GREY[..., None], 3, -1))  # [H, W]
    assert np.array_equal(px(read_image(GREY[None])), np.repeat(GREY[..., None], 3, -1))  # [1, H, W]
    assert np.array_equal(px(read_image(RGB.astype(np.int64))), RGB)  # integer 0-255 of any dtype
    assert np.array_equal(px(read_image(torch.tensor(RGB))), RGB)
    four = np.dstack([RGB, np.where(MASK, 0, 255)]).astype(np.uint8)
    assert np.array_equal(px(read_image(four)), on_white(~MASK))


# (id, image, phrase of the fix)
BAD_IMAGES = [
    ("float-over-1", RGB.astype(np.float32), "divide 0-255 pixels by 255"),
    ("float-normalized", (RGB / 255 - 0.5) / 0.25, "undo any normalization"),
    ("float-nan", np.full((8, 8, 3), np.nan), "NaN or infinite"),
    ("int-over-255", RGB.astype(np.int32) * 2, "outside 0-255"),
    ("int-negative", RGB.astype(np.int16) - 128, "outside 0-255"),
    ("mode-i-over-255", Image.fromarray(GREY.astype(np.int32) * 300), "mode 'I;16' image"),
    ("mode-f-over-1", Image.fromarray(GREY.astype(np.float32)), "outside [0, 1]"),
    ("four-dims", RGB[None], "a batch: one array per image"),
    ("two-channels", np.zeros((5, 6, 2), np.uint8), "C = 1, 3 or 4"),
    ("empty-array", np.zeros((0, 6, 3), np.uint8), "pass an image with pixels"),
    ("empty-pil", Image.new("RGB", (0, 4)), "pass an image with pixels"),
    ("bool", np.ones((4, 4), bool), "mask.astype(np.uint8) * 255"),
    ("undecodable-bytes", b"\x89PNG\r\n\x1a\n not an image", "re-encode the image as PNG/JPEG"),
    ("empty-bytes", b"", "re-encode the image as PNG/JPEG"),
    ("bomb-error", bomb_png(20000, 20000), "PIL.Image.MAX_IMAGE_PIXELS"),
    ("bomb-warning", bomb_png(10000, 10000), "PIL.Image.MAX_IMAGE_PIXELS"),
    ("url", "https://example.com/cat.png", "Download the file and pass its path"),
    ("missing-file", "/nonexistent/cat.png", "pass an existing path"),
    ("not-an-image-type", 42, "pass a PIL.Image"),
    ("struct-without-bytes", {"bytes": None, "path": None}, "give the struct its 'bytes'"),
]


@pytest.mark.parametrize("case", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_refused_with_the_fix(case):
    _, image, phrase = case
    with pytest.raises(InputError) as info:
        read_image(image)
    assert isinstance(info.value, MechError) and phrase in str(info.value), str(info.value)


def test_bomb_warning_threshold_follows_pil(monkeypatch):
    im = encode(Image.fromarray(RGB))  # 48 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 40 < 48 < 80: PIL warns, mech refuses
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(im)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48)
    assert np.array_equal(px(read_image(im)), RGB)


# ------------------------------------------------------------------------------------ data rows


def mmmu_row(
    i, image=None, options="['cat', 'dog', 'bird', 'fish']", answer="B", question="What is in <image 1>?"
):
    row = {
        "id": f"validation_Art_{i}",
        "question": question,
        "options": options,
        "explanation": "",
        **{f"image_{k}": None for k in range(1, 8)},
        "img_type": "['Photographs']",
        "answer": answer,
        "topic_difficulty": "Easy",
        "subject": "Art",
    }
    if image is not None:
        row["image_1"] = {"bytes": image, "path": f"{i}.png"}
    return row


@pytest.fixture()
def mmmu(tmp_path):
    rows = [
        mmmu_row(1, encode(Image.fromarray(RGB))),
        mmmu_row(2, bomb_png(20000, 20000)),  # decompression bomb
        mmmu_row(3, encode(rgba(np.where(MASK, 0, 255)))),  # transparency
        mmmu_row(4, encode(Image.fromarray(GREY.astype(np.uint16) * 257))),  # 16-bit
        mmmu_row(5, encode(Image.fromarray(RGB)), answer=None),  # missing answer
        mmmu_row(6, encode(Image.fromarray(RGB)), options="42"),  # options not a list
        mmmu_row(7, b"\xff\xd8\xff garbage"),  # undecodable
        mmmu_row(8, exif_bytes(6)),
    ]  # EXIF rotated
    pd.DataFrame(rows).to_parquet(tmp_path / "test-00000-of-00001.parquet")
    return tmp_path


def test_mmmu_bad_rows_skipped_rest_loaded(mmmu):
    d = load_data(f"mmmu-pro:{mmmu}")
    assert [s["id"] for s in d] == [f"validation_Art_{k}" for k in (1, 3, 4, 8)]
    by = {s["id"]: s for s in d}
    assert np.array_equal(px(by["validation_Art_1"]["images"][0]), RGB)
    assert np.array_equal(px(by["validation_Art_3"]["images"][0]), on_white(~MASK))
    assert np.array_equal(px(by["validation_Art_4"]["images"][0]), np.repeat(GREY[..., None], 3, -1))
    assert np.array_equal(px(by["validation_Art_8"]["images"][0]), np.rot90(RGB, -1))
    reasons = dict(d.skipped)
    assert (
        "decompression bomb" in reasons["validation_Art_2"]
        and "MAX_IMAGE_PIXELS" in reasons["validation_Art_2"]
    )
    assert reasons["validation_Art_5"] == "missing answer"
    assert "malformed options" in reasons["validation_Art_6"]
    assert "corrupt image bytes in image_1" in reasons["validation_Art_7"]
    summary = d.skipped_summary()
    assert summary == skipped_summary(d.skipped) and summary["count"] == 4
    assert sum(summary["reasons"].values()) == 4 and {i["id"] for i in summary["items"]} == set(reasons)


def test_mmmu_bomb_strict_raises_data_error(mmmu):
    with pytest.raises(DataError, match="validation_Art_2.*decompression bomb.*strict=False"):
        load_data(f"mmmu-pro:{mmmu}", strict=True)


def test_mmmu_options_as_parquet_list_column(tmp_path):
    pd.DataFrame(
        [mmmu_row(1, encode(Image.fromarray(RGB)), options=["cat", "dog"], answer="dog")]
    ).to_parquet(tmp_path / "x.parquet")
    d = load_data(f"mmmu-pro:{tmp_path}")
    assert d[0]["options"] == ["cat", "dog"] and d[0]["answer"] == "B" and d.skipped == []


def test_mmmu_vision_bad_image_skipped(tmp_path):
    rows = [
        {
            "id": "v1",
            "image": {"bytes": encode(Image.fromarray(RGB)), "path": "v1.png"},
            "options": "['a', 'b']",
            "answer": "A",
        },
        {
            "id": "v2",
            "image": {"bytes": bomb_png(30000, 30000), "path": "v2.png"},
            "options": "['a', 'b']",
            "answer": "A",
        },
        {"id": "v3", "image": {"bytes": None, "path": "nowhere.png"}, "options": "['a', 'b']", "answer": "A"},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "v.parquet")
    d = load_data(f"mmmu-pro:{tmp_path}")
    assert [s["id"] for s in d] == ["v1"] and np.array_equal(px(d[0]["images"][0]), RGB)
    reasons = dict(d.skipped)
    assert (
        "decompression bomb" in reasons["v2"] and "neither image bytes nor a readable path" in reasons["v3"]
    )


def test_jsonl_images_read_like_transformers_and_bad_rows_skipped(tmp_path):
    rgba(np.where(MASK, 0, 255)).save(tmp_path / "t.png")
    Image.fromarray(GREY.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    (tmp_path / "r.png").write_bytes(exif_bytes(8))
    (tmp_path / "bomb.png").write_bytes(bomb_png(20000, 20000))
    ok = {"question": "colour ?", "options": ["red", "blue"], "answer": "A"}
    lines = [
        dict(ok, id="t", image="t.png"),
        dict(ok, id="g", image="g16.png"),
        dict(ok, id="r", image="r.png"),
        dict(ok, id="bomb", image="bomb.png"),
        dict(ok, id="int", image=5),
        dict(ok, id="noans", answer=None),
        dict(ok, id="opts", options={"a": 1}),
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    d = load_data(f"jsonl:{tmp_path / 'd.jsonl'}")
    assert [s["id"] for s in d] == ["t", "g", "r"]
    assert np.array_equal(px(d[0]["images"][0]), on_white(~MASK))
    assert np.array_equal(px(d[1]["images"][0]), np.repeat(GREY[..., None], 3, -1))
    assert np.array_equal(px(d[2]["images"][0]), np.rot90(RGB, 1))
    reasons = dict(d.skipped)
    assert "MAX_IMAGE_PIXELS" in reasons["bomb"] and "must be a path or a list of paths" in reasons["int"]
    assert reasons["noans"] == "missing answer" and "malformed options" in reasons["opts"]


def test_white_image_condition_keeps_the_upright_size():
    sample = {"id": "x", "question": "?", "images": [exif_image(6)]}  # stored 8x6, shown 6x8
    assert apply_condition(sample, "white_image")["images"][0].size == (6, 8)


# ----------------------------------------------------------------------------------- m.prepare


@pytest.fixture(scope="module")
def llava():
    return mech.load(tiny_model("llava"))


IMG = Image.fromarray(np.full((32, 32, 3), 90, np.uint8))
PREPARE_CASES = [
    (
        "two-images-one-prompt",
        lambda m: m.prepare([IMG, IMG], ["what colour is the shape ?"]),
        "[[img1, img2]]",
    ),
    (
        "two-images-str-prompt",
        lambda m: m.prepare([IMG, IMG], "what colour is the shape ?"),
        "[[img1, img2]]",
    ),
    ("list-lengths", lambda m: m.prepare([IMG, IMG, IMG], ["what ?", "which ?"]), "one entry (an image"),
    (
        "images-vs-placeholders",
        lambda m: m.prepare([[IMG, IMG]], ["<image> what ?"]),
        "one image per placeholder",
    ),
    ("too-long", lambda m: m.prepare([IMG], [" ".join(["shape"] * 600)]), "maximum of 512 positions"),
    ("bad-image-in-prepare", lambda m: m.prepare([np.full((32, 32, 3), 2.0)], ["what ?"]), "divide 0-255"),
]


@pytest.mark.parametrize("case", PREPARE_CASES, ids=[c[0] for c in PREPARE_CASES])
def test_prepare_refuses_with_the_fix(llava, case):
    _, call, phrase = case
    with pytest.raises(InputError) as info:
        call(llava)
    assert phrase in str(info.value), str(info.value)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_max_positions_read_from_the_text_config(family):
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    img = Image.fromarray(np.full((IMAGE_SIZES[family][1], IMAGE_SIZES[family][0], 3), 90, np.uint8))
    length = int(m.prepare([img], ["what colour is the shape ?"])["attention_mask"].sum())
    model.config.text_config.max_position_embeddings = length  # exactly fits
    m.prepare([img], ["what colour is the shape ?"])
    model.config.text_config.max_position_embeddings = length - 1
    with pytest.raises(InputError, match=f"is {length} tokens long.*maximum of {length - 1} positions"):
        m.prepare([img], ["what colour is the shape ?"])


def test_prepare_reads_images_like_transformers(llava):
    alpha = np.where(np.arange(32 * 32).reshape(32, 32) % 5 == 0, 0, 255)
    base = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    four = Image.fromarray(np.dstack([base, alpha]).astype(np.uint8))
    white = Image.fromarray(np.where(alpha[..., None] > 0, base, 255).astype(np.uint8))
    got, want = llava.prepare([four], ["what ?"]), llava.prepare([white], ["what ?"])
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    g = RNG.integers(0, 256, (32, 32), dtype=np.uint8)
    got = llava.prepare([Image.fromarray(g.astype(np.uint16) * 257)], ["what ?"])
    want = llava.prepare([Image.fromarray(np.repeat(g[..., None], 3, -1))], ["what ?"])
    assert torch.equal(got["pixel_values"], want["pixel_values"])


def test_prompt_outside_the_vocabulary_warns(llava):
    with pytest.warns(FitWarning, match="outside the model's vocabulary"):
        llava.prepare([IMG], ["zorblax quintessential flibbertigibbet ?"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        llava.prepare([IMG], ["what colour is the shape ?"])


@pytest.fixture(scope="module")
def organism():
    return mech.load("organism:balanced")


def test_organism_on_mmmu_pro_says_words_are_outside_its_vocabulary(organism, tmp_path):
    questions = [
        "Which economic policy is illustrated in <image 1>?",
        "Identify the architectural style of the building in <image 1>.",
        "What does the chart in <image 1> suggest about rainfall trends?",
    ]
    rows = [
        mmmu_row(
            i,
            encode(Image.fromarray(RGB)),
            question=q,
            options="['inflation', 'baroque', 'decline']",
            answer="A",
        )
        for i, q in enumerate(questions)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "x.parquet")
    d = load_data(f"mmmu-pro:{tmp_path}")
    with pytest.warns(FitWarning, match="most question words .* are outside the model's vocabulary") as rec:
        share = check_data_fit(organism, d)
    assert share > 0.5 and "mmmu-pro" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        assert check_data_fit(organism, load_data("organism:shapes", n=20)) == 0.0


def test_eval_skips_a_prompt_longer_than_the_model_and_answers_the_rest(organism):
    """A row whose prompt alone is longer than the organism's 128 positions is skipped with its reason by
    evaluate (one bad row never fails the data set); the other rows are answered as they are alone."""
    from mech.measure.evaluation.run import evaluate

    data = load_data("organism:shapes", n=3)
    long = dict(data[1], id="too-long", question=" ".join(["what"] * 300) + " ?")
    both = evaluate(organism, [data[0], long, data[2]], conditions=("complete",), progress=False)
    alone = evaluate(organism, [data[0], data[2]], conditions=("complete",), progress=False)
    assert both["skipped"]["count"] == 1 and both["skipped"]["items"][0]["id"] == "too-long"
    assert "128 positions" in both["skipped"]["items"][0]["reason"]
    assert both["ids"] == alone["ids"] == [data[0]["id"], data[2]["id"]]
    assert both["predictions"] == alone["predictions"]


def test_rgb_key_colour_transparency_is_white_as_transformers_reads_it():
    """An RGB image with a tRNS key colour: the key pixels become white, as transformers'
    convert_to_rgb composites them (the oracle), the others are unchanged."""
    arr = np.full((6, 6, 3), 200, dtype=np.uint8)
    arr[:3] = (10, 20, 30)
    im = Image.fromarray(arr, "RGB")
    im.info["transparency"] = (10, 20, 30)
    got = np.asarray(read_image(im))
    assert (got[:3] == 255).all() and (got[3:] == 200).all()
    assert np.array_equal(got, np.asarray(convert_to_rgb(im, return_numpy=True)))


def test_an_array_whose_layout_is_ambiguous_is_refused():
    """[4, 4, 3]: both ends could be the channels; refused rather than read as a 3x4 RGBA image."""
    with pytest.raises(InputError, match="PIL.Image.fromarray"):
        read_image(np.full((4, 4, 3), 0.5))
    assert read_image(np.full((8, 8, 3), 0.5)).size == (8, 8)  # unambiguous: [H, W, C]


def test_a_struct_with_an_absolute_path_and_no_base_is_read(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(read_image({"bytes": None, "path": str(tmp_path / "a.png")})), arr)
