"""Data loaders (issue 4): MMMU-Pro parquet in the real schema, jsonl, organism:shapes; bad rows
are skipped with their reason (or raise with strict=True), never dropped silently."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mech.errors import ConfigError, DataError, SpecError
from mech.prepare.data import COT, COT_VISION, DIRECT, DIRECT_VISION, format_prompt, load_data


def png(color, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


RED, GREEN, BLUE = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))


def mmmu_row(
    i, question="What is shown in <image 1>?", options="['cat', 'dog', 'bird', 'fish']", answer="B", **images
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
    for k, v in images.items():
        row[k] = {"bytes": v, "path": f"{k}.png"}
    return row


def write_standard(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


ROWS = [
    mmmu_row(1, image_1=RED),  # ok
    mmmu_row(
        2, question="Compare <image 2> with <image 1>.", answer="a", image_1=RED, image_2=BLUE
    ),  # ok, order
    mmmu_row(3, image_1=b"\x89PNG\r\n\x1a\n not an image"),  # corrupt bytes
    mmmu_row(4, options="['cat', 'dog'", image_1=RED),  # malformed options
    mmmu_row(5, answer="E", image_1=RED),  # letter outside A-D: kept, noted
    mmmu_row(6, question="Look at <image 3>.", image_1=RED),  # refers to an empty image
    mmmu_row(7, options="__import__('os').getcwd()", image_1=RED),  # not a literal: never evaluated
    mmmu_row(
        8, question="Which one?", options="['<image 1>', '<image 2>']", answer="A", image_1=GREEN, image_2=RED
    ),  # images in the options
]


def test_mmmu_pro_rows_and_skips(tmp_path):
    write_standard(tmp_path / "test-00000-of-00001.parquet", ROWS)
    d = load_data(f"mmmu-pro:{tmp_path}")
    assert [s["id"] for s in d] == [
        "validation_Art_1",
        "validation_Art_2",
        "validation_Art_5",
        "validation_Art_8",
    ]
    s1, s2, s5, s8 = d.samples
    assert s1["options"] == ["cat", "dog", "bird", "fish"] and s1["answer"] == "B" and s1["subject"] == "Art"
    assert np.asarray(s1["images"][0])[0, 0].tolist() == [255, 0, 0]
    assert [np.asarray(im)[0, 0].tolist() for im in s2["images"]] == [
        [0, 0, 255],
        [255, 0, 0],
    ]  # mention order
    assert s2["answer"] == "A"
    assert [np.asarray(im)[0, 0].tolist() for im in s8["images"]] == [[0, 255, 0], [255, 0, 0]]
    reasons = dict(d.skipped)
    assert len(d.skipped) == 4
    assert "corrupt image bytes in image_1" in reasons["validation_Art_3"]
    assert "malformed options" in reasons["validation_Art_4"]
    # MMMU-Pro's official code keeps a row whose answer lies beyond its options (always wrong): so does mech
    assert (
        s5["answer"] == "E" and [i for i, _ in d.notes] == ["validation_Art_5"] and "beyond" in d.notes[0][1]
    )
    assert "<image 3>" in reasons["validation_Art_6"]
    assert "malformed options" in reasons["validation_Art_7"]
    assert d.scoring == "letter" and d.default_style == "direct"


def test_mmmu_pro_n_counts_usable_rows_and_strict(tmp_path):
    write_standard(tmp_path / "a.parquet", ROWS)
    d = load_data(f"mmmu-pro:{tmp_path}", n=2)
    assert len(d) == 2 and d.skipped == []
    d = load_data(f"mmmu-pro:{tmp_path}", n=4)
    assert len(d) == 4 and len(d.skipped) == 4
    with pytest.raises(DataError, match="validation_Art_3.*corrupt image bytes"):
        load_data(f"mmmu-pro:{tmp_path}", strict=True)


def test_mmmu_pro_root_with_configurations(tmp_path):
    write_standard(
        tmp_path / "standard (10 options)" / "test-00000-of-00001.parquet",
        [mmmu_row(1, options=str([f"o{k}" for k in range(10)]), answer="J", image_1=RED)],
    )
    write_standard(
        tmp_path / "standard (4 options)" / "test-00000-of-00001.parquet", [mmmu_row(2, image_1=RED)]
    )
    vision = pd.DataFrame(
        [
            {
                "id": "v1",
                "image": {"bytes": GREEN, "path": "v1.png"},
                "options": "['cat', 'dog', 'bird', 'fish']",
                "answer": "C",
                "subject": "Art",
            },
            {"id": "v2", "image": None, "options": "['cat', 'dog']", "answer": "A", "subject": "Art"},
        ]
    )
    (tmp_path / "vision").mkdir()
    vision.to_parquet(tmp_path / "vision" / "test-00000-of-00001.parquet")
    d10 = load_data(f"mmmu-pro:{tmp_path}")  # default: standard (10 options)
    assert [s["id"] for s in d10] == ["validation_Art_1"] and d10[0]["answer"] == "J"
    assert "standard (10 options)" in d10.name
    assert [s["id"] for s in load_data(f"mmmu-pro:{tmp_path}#standard-4")] == ["validation_Art_2"]
    assert [s["id"] for s in load_data(f"mmmu-pro:{tmp_path}#standard (4 options)")] == ["validation_Art_2"]
    dv = load_data(f"mmmu-pro:{tmp_path}#vision")
    assert [s["id"] for s in dv] == ["v1"] and dict(dv.skipped) == {"v2": "no image in the 'image' column"}
    v = dv[0]
    assert v["question"] == "" and v["options_in_image"] and len(v["images"]) == 1
    assert format_prompt(v) == DIRECT_VISION and format_prompt(v, "cot") == COT_VISION
    with pytest.raises(SpecError, match="standard-4, standard-10, vision"):
        load_data(f"mmmu-pro:{tmp_path}#standard-7")
    with pytest.raises(SpecError, match="does not exist"):
        load_data(f"mmmu-pro:{tmp_path}/nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match="no parquet files"):
        load_data(f"mmmu-pro:{empty}")


def test_mmmu_pro_schema_errors(tmp_path):
    pd.DataFrame([{"id": "x", "question": "q"}]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="options"):
        load_data(f"mmmu-pro:{tmp_path}")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read parquet"):
        load_data(f"mmmu-pro:{tmp_path}")


def test_prompt_formats():
    s = {"question": "What is shown in <image 1>?", "options": ["cat", "dog"], "images": []}
    assert format_prompt(s, "direct") == f"What is shown in <image 1>?\nA. cat\nB. dog\n{DIRECT}"
    assert format_prompt(s, "cot") == f"What is shown in <image 1>?\nA. cat\nB. dog\n{COT}"
    assert format_prompt(s, "bare") == "What is shown in <image 1>?"
    with pytest.raises(ConfigError, match="bare, direct, cot"):
        format_prompt(s, "fancy")


def test_jsonl(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "imgs" / "b.png")
    (tmp_path / "broken.png").write_bytes(b"nope")
    lines = [
        {"id": "q1", "question": "colour?", "image": "a.png", "options": ["red", "blue"], "answer": "A"},
        {
            "id": "q2",
            "question": "colours?",
            "images": ["a.png", "imgs/b.png"],
            "options": ["red", "blue"],
            "answer": "blue",
        },
        {"id": "q3", "question": "what is it?", "image": "a.png", "answer": "a square"},
        "this line is not json",
        {"id": "q5", "question": "?", "image": "missing.png", "options": ["x", "y"], "answer": "A"},
        {"id": "q6", "question": "?", "image": "a.png", "options": ["x", "y"], "answer": "C"},
        {"id": "q7", "question": "?", "image": "broken.png", "options": ["x", "y"], "answer": "A"},
        {"id": "q8", "question": "?", "image": "a.png", "options": "['x']", "answer": "A"},
        {"id": "q9", "question": "no image here", "options": ["x", "y"], "answer": "B"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    d = load_data(f"jsonl:{path}")
    assert [s["id"] for s in d] == ["q1", "q2", "q3", "q8", "q9"]
    assert d[1]["answer"] == "B" and len(d[1]["images"]) == 2
    assert np.asarray(d[1]["images"][1])[0, 0].tolist() == [0, 0, 255]
    assert d[2]["options"] == [] and d[2]["answer"] == "a square"
    assert d[3]["options"] == ["x"] and d[4]["images"] == []
    reasons = dict(d.skipped)
    assert set(reasons) == {"line-4", "q5", "q6", "q7"}
    assert "not JSON" in reasons["line-4"] and "does not exist" in reasons["q5"]
    assert "outside the options A-B" in reasons["q6"] and "not a readable image" in reasons["q7"]
    with pytest.raises(DataError, match="row line-4: line 4 is not JSON"):
        load_data(f"jsonl:{path}", strict=True)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[0]) + "\n")
    with pytest.raises(DataError, match="duplicate ids"):
        load_data(f"jsonl:{dup}")
    with pytest.raises(SpecError, match="does not exist"):
        load_data(f"jsonl:{tmp_path}/none.jsonl")


def test_specs_and_organism_data():
    with pytest.raises(SpecError, match="organism:shapes, mmmu-pro"):
        load_data("csv:thing")
    with pytest.raises(ConfigError):
        load_data("organism:shapes", n=0)
    d = load_data("organism:shapes", n=5, seed=1)
    assert len(d) == 5 and d.scoring == "option_text" and d.default_style == "bare"
    assert all(d.prompt(s) == s["question"] for s in d)
    assert all(len(s["images"]) == 1 and s["answer"] in "ABCD" for s in d)
    assert [s["id"] for s in d] == [s["id"] for s in load_data("organism:shapes", n=5, seed=1)]


def test_jsonl_keeps_its_own_conventions(tmp_path):
    """Only MMMU-Pro follows MMMU-Pro's official code: a jsonl option that is a list is still refused,
    and jsonl samples carry no image_position (m.prepare's default: images before the text)."""
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    lines = [
        {"id": "n1", "question": "?", "image": "a.png", "options": [["x", "y"], "z"], "answer": "A"},
        {"id": "n2", "question": " q <image 1> ", "image": "a.png", "options": ["x", "y"], "answer": "B"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    d = load_data(f"jsonl:{path}")
    assert [s["id"] for s in d] == ["n2"] and "an option is not text" in dict(d.skipped)["n1"]
    assert "image_position" not in d[0] and format_prompt(d[0]) == f"q <image 1>\nA. x\nB. y\n{DIRECT}"
