"""The tiny model zoo: every family builds offline, runs a forward, and places encoder features
exactly on its modality tokens."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from mech.testing import FAMILIES, tiny_inputs, tiny_model

# config attribute -> token string, per family (the config ids must be the tokenizer's ids)
MODALITY_TOKENS = {
    "llava": {"image_token_index": "<image>"},
    "llava_next": {"image_token_index": "<image>"},
    "llava_onevision": {"image_token_index": "<image>", "video_token_index": "<video>"},
    **{
        f: {
            "image_token_id": "<|image_pad|>",
            "video_token_id": "<|video_pad|>",
            "vision_start_token_id": "<|vision_start|>",
            "vision_end_token_id": "<|vision_end|>",
        }
        for f in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    },
    "gemma3": {
        "image_token_index": "<image_soft_token>",
        "boi_token_index": "<start_of_image>",
        "eoi_token_index": "<end_of_image>",
    },
    "internvl": {"image_token_id": "<IMG_CONTEXT>"},
    "idefics3": {"image_token_id": "<image>"},
    "smolvlm": {"image_token_id": "<image>"},
    "paligemma": {"image_token_index": "<image>"},
    "qwen2_audio": {"audio_token_index": "<|AUDIO|>"},
    "mllama": {"image_token_index": "<|image|>"},
}

# modality tokens per image (per audio clip) for the inputs tiny_inputs makes
TOKENS_PER_ITEM = {
    "llava": 16,
    "llava_next": 70,
    "llava_onevision": 70,
    "qwen2_vl": 6,
    "qwen2_5_vl": 6,
    "qwen3_vl": 6,
    "gemma3": 16,
    "internvl": 16,
    "idefics3": 20,
    "smolvlm": 20,
    "paligemma": 16,
    "qwen2_audio": 12,
    "mllama": 1,
}

_FEATURE_ID_ATTRS = ("image_token_id", "image_token_index", "audio_token_index", "audio_token_id")


def _feature_token_id(config) -> int:
    return next(getattr(config, a) for a in _FEATURE_ID_ATTRS if getattr(config, a, None) is not None)


def _language_model(model):
    inner = model.model
    return getattr(inner, "language_model", None) or inner.text_model


@pytest.fixture(scope="module", params=FAMILIES)
def built(request):
    family = request.param
    model, processor = tiny_model(family)
    return family, model, processor


def test_families_cover_model_types():
    assert set(FAMILIES) == set(MODALITY_TOKENS) == set(TOKENS_PER_ITEM)


def test_config_ids_match_tokenizer(built):
    family, model, processor = built
    assert model.config.model_type == family
    assert not model.training and model.dtype == torch.float32
    tok = processor.tokenizer
    for attr, token in MODALITY_TOKENS[family].items():
        assert getattr(model.config, attr) == tok.convert_tokens_to_ids(token), (attr, token)
    assert model.config.get_text_config().vocab_size >= len(tok)


@pytest.mark.parametrize("batch", [1, 2])
def test_forward_and_feature_placement(built, batch):
    family, model, processor = built
    inputs = tiny_inputs(family, processor, batch=batch)
    ids = inputs["input_ids"]
    if batch == 2:
        assert (inputs["attention_mask"] == 0).any(), "batch of unequal prompts must be padded"

    captured = {}

    def pre_hook(module, args, kwargs):
        captured.update(kwargs)

    handle = _language_model(model).register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        handle.remove()

    vocab = model.config.get_text_config().vocab_size
    assert out.logits.shape == (batch, ids.shape[1], vocab)
    assert torch.isfinite(out.logits).all()

    token_id = _feature_token_id(model.config)
    n_tokens = (ids == token_id).sum(dim=1)
    assert n_tokens.tolist() == [TOKENS_PER_ITEM[family]] * batch

    if family == "mllama":  # cross-attention: the <|image|> token keeps its embedding
        # vision states: [batch * images * max_tiles, patches (+cls, padded), hidden]
        states = captured["cross_attention_states"]
        n_tiles = inputs["pixel_values"].shape[2]
        assert states.shape[0] == batch * n_tokens[0] * n_tiles
        assert states.shape[-1] == model.config.text_config.hidden_size
        cross_mask = inputs["cross_attention_mask"]  # [batch, seq, images, tiles]
        assert cross_mask.shape[:3] == (batch, ids.shape[1], TOKENS_PER_ITEM[family])
        return

    if family == "qwen3_vl":  # deepstack: visual features also added after decoder layers 0 and 1
        deepstack = captured["deepstack_visual_embeds"]
        assert len(deepstack) == len(model.config.vision_config.deepstack_visual_indexes) == 2
        assert all(d.shape[0] == int(n_tokens.sum()) for d in deepstack)
        assert torch.equal(captured["visual_pos_masks"], ids == token_id)

    embeds = captured["inputs_embeds"]
    with torch.no_grad():
        plain = model.get_input_embeddings()(ids.clamp(0, vocab - 1))
    inserted = (embeds != plain).any(dim=-1)
    assert inserted.sum(dim=1).tolist() == n_tokens.tolist()
    assert torch.equal(inserted, ids == token_id)
