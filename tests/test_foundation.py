"""Foundation: loading, family tables, token groups, errors (issue 2).

Oracle for the modality groups: the positions whose decoder input embedding differs from the
plain token embedding, captured with a hand-written forward pre-hook on the decoder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech.errors import InputError, ProcessorError, SpecError, UnsupportedArchitectureError
from mech.testing.tiny import FAMILIES, tiny_inputs, tiny_model

IMAGE = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))


def replaced_positions(m, inputs) -> torch.Tensor:
    """BoolTensor [batch, pos]: where the decoder's inputs_embeds differ from embed(input_ids)."""
    seen = {}
    lm = m.arch.module(m.model, "language_model")

    def grab(module, args, kwargs):
        # None: the decoder embeds input_ids itself, so nothing was replaced (cross-attention families)
        seen["embeds"] = kwargs.get("inputs_embeds")

    handle = lm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            m.model(**inputs)
    finally:
        handle.remove()
    ids = inputs["input_ids"]
    emb = m.model.get_input_embeddings()
    plain = emb(torch.where(ids < emb.num_embeddings, ids, torch.zeros_like(ids)))
    if seen["embeds"] is None:
        return torch.zeros_like(ids, dtype=torch.bool)
    return ~torch.isclose(seen["embeds"], plain, atol=1e-6, rtol=0).all(dim=-1)


def _family_inputs(m, family, proc):
    if family == "qwen2_audio":
        return m.inputs(tiny_inputs(family, proc, batch=2))
    images = [IMAGE, IMAGE] if family == "paligemma" else [IMAGE, None]
    return m.prepare(images, ["what colour is the shape ?", "how many shapes are there ?"])


@pytest.mark.parametrize("family", FAMILIES)
def test_modality_groups_equal_replaced_embeddings(family):
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    inputs = _family_inputs(m, family, proc)
    groups = mech.token_groups(m, inputs)
    modality = groups.mask("image") | groups.mask("video") | groups.mask("audio")
    replaced = replaced_positions(m, inputs)
    assert torch.equal(modality, replaced)
    if family != "mllama":
        assert modality.any()
    # a partition: every non-padding position has exactly one group, padding none
    one_hot = groups.one_hot()
    assert torch.equal(one_hot.sum(-1), groups.valid.float())
    assert (groups.counts()[:, groups.index("bos")] == 1).all()


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "qwen2_audio"])
def test_text_group_is_the_prompt(family):
    """Every family's template shape, images before and after the text, two images (the processors
    expand placeholders and insert markers, newlines and tiles around them): text = the prompt's words."""
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    prompt = "what colour is the shape ?"
    for position in ("before", "after"):
        inputs = m.prepare([[IMAGE, IMAGE]], [prompt], image_position=position)
        g = inputs.groups
        assert g.text_source == ("prompt",)
        mask = g.mask("text")[0]
        if family == "paligemma" and position == "after":  # the prompt comes first: its first word is the bos
            mask = mask | g.mask("bos")[0]
        assert proc.tokenizer.decode(inputs["input_ids"][0][mask]).split() == prompt.split(), (
            family,
            position,
        )


def test_padding_does_not_change_groups():
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    long_p, short_p = "what colour is the shape on the left ?", "what ?"
    batch = m.prepare([IMAGE, IMAGE], [long_p, short_p])
    alone = m.prepare([IMAGE], [short_p])
    n = alone["input_ids"].shape[1]
    side = m.arch.table.padding_side
    row = batch.groups.labels[1]
    got = row[-n:] if side == "left" else row[:n]
    assert torch.equal(got, alone.groups.labels[0])
    assert (batch.groups.labels[1] == -1).sum() == batch["input_ids"].shape[1] - n
    assert torch.equal(
        batch.groups.last(),
        batch["attention_mask"].sum(1) - 1
        if side == "right"
        else torch.full((2,), batch["input_ids"].shape[1] - 1),
    )


def test_qwen2_5_vl_positions_and_logits_are_the_models_own():
    model, proc = tiny_model("qwen2_5_vl")
    m = mech.load((model, proc))
    raw = tiny_inputs("qwen2_5_vl", proc, batch=2)
    assert "mm_token_type_ids" in raw
    with torch.no_grad():
        reference = model(**raw).logits
    # positions: what reaches the decoder equals the model's own get_rope_index
    seen = {}
    lm = m.arch.module(model, "language_model")
    handle = lm.register_forward_pre_hook(
        lambda mod, a, k: seen.update(pos=k["position_ids"]), with_kwargs=True
    )
    stripped = {k: v for k, v in raw.items() if k != "mm_token_type_ids"}  # mech must rebuild it
    try:
        got = m.logits(stripped)
    finally:
        handle.remove()
    own, _ = model.model.get_rope_index(
        raw["input_ids"],
        image_grid_thw=raw["image_grid_thw"],
        attention_mask=raw["attention_mask"],
        mm_token_type_ids=raw["mm_token_type_ids"],
    )
    assert torch.equal(seen["pos"][-3:], own[-3:])
    torch.testing.assert_close(got, reference, atol=1e-6, rtol=0)


def test_local_directory_round_trip(tmp_path):
    model, proc = tiny_model("llava")
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    m = mech.load(str(tmp_path))
    assert m.arch.model_type == "llava"
    inputs = m.prepare([IMAGE], ["what colour is the shape ?"])
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(m.logits(inputs), expected, atol=1e-6, rtol=0)


# ---- bad input: each a clear MechError ---------------------------------------------------------


def test_unsupported_architecture_lists_supported():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
        )
    )
    with pytest.raises(UnsupportedArchitectureError, match="qwen2_5_vl") as err:
        mech.load((model, None))
    assert "llama" in str(err.value) and isinstance(err.value, mech.MechError)


def test_missing_path():
    with pytest.raises(SpecError, match="does not exist"):
        mech.load("/no/such/model/dir")


def test_directory_without_processor(tmp_path):
    model, _ = tiny_model("llava")
    model.save_pretrained(tmp_path)
    with pytest.raises(ProcessorError, match="save_pretrained"):
        mech.load(str(tmp_path))


def test_missing_processor_for_prepare():
    model, _ = tiny_model("llava")
    m = mech.load((model, None))
    with pytest.raises(ProcessorError, match="tokenized inputs"):
        m.prepare([IMAGE], ["what ?"])


def test_image_count_differs_from_placeholders():
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    with pytest.raises(InputError, match="placeholder"):
        m.prepare([[IMAGE]], [f"{proc.image_token} {proc.image_token} compare the two"], chat_template=False)


def test_file_that_is_not_an_image(tmp_path):
    bad = tmp_path / "cat.png"
    bad.write_text("not an image")
    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    with pytest.raises(InputError, match="not a readable image"):
        m.prepare([str(bad)], ["what ?"])
    with pytest.raises(InputError, match="does not exist"):
        m.prepare([str(tmp_path / "missing.png")], ["what ?"])


def test_cross_attention_family_is_refused_by_token_instruments():
    model, proc = tiny_model("mllama")
    m = mech.load((model, proc))
    with pytest.raises(UnsupportedArchitectureError, match="cross-attention"):
        m.require_decoder_sequence("attention mass")


def test_cli_help_lists_the_contract(capsys):
    from mech.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("eval", "attention", "patch", "contrib", "report"):
        assert command in out


@pytest.mark.parametrize("family", [f for f in FAMILIES if mech.models.TABLES[f].derived_inputs])
def test_derived_inputs_restore_the_models_own_logits(family):
    """Dropping an input the family needs (mm_token_type_ids, Gemma3's token_type_ids) changes
    nothing through mech: it is rebuilt from input_ids as the processor builds it."""
    model, proc = tiny_model(family)
    m = mech.load((model, proc))
    raw = tiny_inputs(family, proc, batch=2)
    keys = set(m.arch.table.derived_inputs)
    assert keys <= set(raw), f"processor of {family} no longer returns {keys - set(raw)}"
    with torch.no_grad():
        reference = model(**raw).logits
    stripped = {k: v for k, v in raw.items() if k not in keys}
    torch.testing.assert_close(m.logits(stripped), reference, atol=1e-6, rtol=0)
