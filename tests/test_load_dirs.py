"""Every family loads from a directory written by ``save_pretrained`` (issue 13, item 4).

Oracle: the original in-memory tiny model and processor. From the saved directory, ``mech.load``
must give the same processor class, tokenizer and chat template, the same processor outputs
(``input_ids``, pixel values, ...) on the same images and prompts, the same token groups, and
logits equal to the original model's plain Hugging Face logits. Where a sub-processor needs a
package that is not installed (torchvision for the video processors), the rest loads and a video
input raises ``MissingDependencyError`` naming the package.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech.errors import MissingDependencyError, ProcessorError
from mech.testing.tiny import FAMILIES, IMAGE_SIZES, tiny_inputs, tiny_model

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    family = request.param
    model, proc = tiny_model(family)
    folder = tmp_path_factory.mktemp(family)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return family, model, proc, folder, mech.load(str(folder))


def _has_video_slot(proc) -> bool:
    return "video_processor" in type(proc).get_attributes()


def test_same_processor_parts(saved):
    family, model, proc, folder, m = saved
    loaded = m.processor
    assert type(loaded) is type(proc)
    assert loaded.chat_template == proc.chat_template
    assert loaded.tokenizer.get_vocab() == proc.tokenizer.get_vocab()
    assert m.arch.model_type == family and type(m.model) is type(model)
    missing = m.meta.get("processor_missing", {})
    if _has_video_slot(proc) and not HAS_TORCHVISION:
        assert missing == {"video_processor": ("torchvision",)}
    else:
        assert missing == {}
    for attribute in type(proc).get_attributes():
        if attribute not in missing and attribute != "tokenizer":
            part, original = getattr(loaded, attribute), getattr(proc, attribute)
            assert type(part) is type(original) and part.to_dict() == original.to_dict(), attribute


def test_same_inputs_groups_and_logits(saved):
    family, model, proc, folder, m = saved
    want = tiny_inputs(family, proc, batch=2)
    got = tiny_inputs(family, m.processor, batch=2)
    assert set(got) == set(want)
    for key in want:
        if torch.is_tensor(want[key]):
            assert torch.equal(got[key], want[key]), key
        else:
            assert got[key] == want[key], key
    with torch.no_grad():
        expected = model(**want).logits
    assert torch.equal(m.logits(got), expected)
    original = mech.load((model, proc))
    g_want, g_got = original.groups(want), m.groups(got)
    assert torch.equal(g_got.labels, g_want.labels) and g_got.names == g_want.names


def test_same_prepared_groups(saved):
    family, model, proc, folder, m = saved
    if not hasattr(proc, "image_processor"):
        pytest.skip("prepare takes images; this family's processor takes audio")
    image = Image.fromarray(np.full((IMAGE_SIZES[family][1], IMAGE_SIZES[family][0], 3), 90, np.uint8))
    want = mech.load((model, proc)).prepare([image], ["what colour is the shape ?"])
    got = m.prepare([image], ["what colour is the shape ?"])
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert (
        torch.equal(got.groups.labels, want.groups.labels)
        and got.groups.text_source == want.groups.text_source
    )


def test_video_input_names_the_missing_package(saved):
    family, model, proc, folder, m = saved
    if not _has_video_slot(proc):
        pytest.skip("no video processor in this family")
    if HAS_TORCHVISION:
        pytest.skip("torchvision is installed: the real video processor was loaded")
    content = [{"type": "video"}, {"type": "text", "text": "what happens ?"}]
    text = m.processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    frames = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(MissingDependencyError, match="torchvision") as err:
        m.processor(text=[text], videos=[frames], return_tensors="pt")
    assert "pip install torchvision" in str(err.value) and isinstance(err.value, mech.MechError)
    # the processor saves as it was loaded: the video processor's entry is kept
    again = folder.parent / f"{family}-again"
    m.processor.save_pretrained(again)
    saved_dict = json.loads((folder / "processor_config.json").read_text())
    again_dict = json.loads((again / "processor_config.json").read_text())
    assert again_dict["video_processor"] == saved_dict["video_processor"]


def test_processor_files_present_but_broken(tmp_path):
    """Processor files that are there but do not load: the reason, not 'save it beside the weights'."""
    model, proc = tiny_model("llava")
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    os.remove(tmp_path / "tokenizer.json")
    with pytest.raises(ProcessorError) as err:
        mech.load(str(tmp_path))
    assert "beside the weights" not in str(err.value) and "tokenizer" in str(err.value)
