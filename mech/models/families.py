"""One declarative table per supported architecture family (see :mod:`mech.models.schema`).

Every entry was checked against a tiny random-weight model built from the family's real config,
model and processor classes (``mech.testing.tiny``): the modality groups equal the positions whose
decoder input embedding is replaced by encoder features.

mllama (Llama 3.2 Vision) is listed so that mech can refuse it precisely: its image features enter
through cross-attention layers, not through positions of the decoder sequence, so there are no
image *tokens* to measure attention mass to, patch or knock out. Token-group instruments
(attention mass, activation patching at image positions, attention knockout, modality-resolved
DLA) raise :class:`~mech.errors.UnsupportedArchitectureError` for it; whole-input conditions
(missing-modality evaluation) work, since they only change the inputs.
"""

from __future__ import annotations

from types import MappingProxyType

from mech.models.schema import ArchitectureTable

__all__ = ["TABLES"]

_IMAGE = {"image": ("image_token_id", "image_token_index")}
_IMAGE_VIDEO = {
    "image": ("image_token_id", "image_token_index"),
    "video": ("video_token_id", "video_token_index"),
}
_QWEN_MARKERS = ("vision_start_token_id", "vision_end_token_id")
_MM_CODES = {"mm_token_type_ids": "modality_codes"}

_IDEFICS = dict(
    language_model="model.text_model",
    layers="model.text_model.layers",
    embed="model.text_model.embed_tokens",
    ln_final="model.text_model.norm",
    modality_tokens=_IMAGE,
    marker_strings=("<fake_token_around_image>", "<global-img>"),
    extra_inputs=("pixel_values", "pixel_attention_mask"),
    notes="Image splitting: <fake_token_around_image><row_r_col_c><image>... per tile; the row/col "
    "and wrapper tokens are template tokens.",
)

#: model_type -> its table; read-only (a new family is a new entry here, never a branch in shared code)
_ENTRIES = (
    ArchitectureTable(
        model_type="llava",
        model_class="LlavaForConditionalGeneration",
        modality_tokens=_IMAGE,
        notes="LLaVA-1.5 and the mech organisms: CLIP/SigLIP tower + MLP projector + Llama-style decoder.",
    ),
    ArchitectureTable(
        model_type="llava_next",
        model_class="LlavaNextForConditionalGeneration",
        modality_tokens=_IMAGE,
        extra_inputs=("pixel_values", "image_sizes"),
        notes="AnyRes tiles; the image_newline features are part of the <image> span.",
    ),
    ArchitectureTable(
        model_type="llava_onevision",
        model_class="LlavaOnevisionForConditionalGeneration",
        modality_tokens=_IMAGE_VIDEO,
        extra_inputs=("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos"),
    ),
    ArchitectureTable(
        model_type="qwen2_vl",
        model_class="Qwen2VLForConditionalGeneration",
        modality_tokens=_IMAGE_VIDEO,
        marker_tokens=_QWEN_MARKERS,
        extra_inputs=(
            "pixel_values",
            "image_grid_thw",
            "pixel_values_videos",
            "video_grid_thw",
            "mm_token_type_ids",
        ),
        derived_inputs=_MM_CODES,
        notes="M-RoPE: 3-D positions computed from input_ids, image_grid_thw and mm_token_type_ids.",
    ),
    ArchitectureTable(
        model_type="qwen2_5_vl",
        model_class="Qwen2_5_VLForConditionalGeneration",
        modality_tokens=_IMAGE_VIDEO,
        marker_tokens=_QWEN_MARKERS,
        extra_inputs=(
            "pixel_values",
            "image_grid_thw",
            "pixel_values_videos",
            "video_grid_thw",
            "second_per_grid_ts",
            "mm_token_type_ids",
        ),
        derived_inputs=_MM_CODES,
        notes="M-RoPE as Qwen2-VL; window attention in the vision tower only.",
    ),
    ArchitectureTable(
        model_type="qwen3_vl",
        model_class="Qwen3VLForConditionalGeneration",
        modality_tokens=_IMAGE_VIDEO,
        marker_tokens=_QWEN_MARKERS,
        extra_inputs=(
            "pixel_values",
            "image_grid_thw",
            "pixel_values_videos",
            "video_grid_thw",
            "mm_token_type_ids",
        ),
        derived_inputs=_MM_CODES,
        injection_layers="vision_config.deepstack_visual_indexes",
        notes="Deepstack: features of early vision layers are added at visual positions after decoder "
        "layers 0..k-1, so the residual there is the next layer's input, not the layer's output.",
    ),
    ArchitectureTable(
        model_type="gemma3",
        model_class="Gemma3ForConditionalGeneration",
        modality_tokens={"image": ("image_token_id", "image_token_index")},
        marker_tokens=("boi_token_id", "boi_token_index", "eoi_token_id", "eoi_token_index"),
        ln2="pre_feedforward_layernorm",
        attn_post_norm="post_attention_layernorm",
        mlp_post_norm="post_feedforward_layernorm",
        extra_inputs=("pixel_values", "token_type_ids"),
        derived_inputs={"token_type_ids": "image_is_one"},
        notes="Bidirectional attention inside each image span; embeddings scaled by sqrt(d_model); "
        "extra post-attention and post-feedforward norms.",
    ),
    ArchitectureTable(
        model_type="paligemma",
        model_class="PaliGemmaForConditionalGeneration",
        modality_tokens=_IMAGE,
        extra_inputs=("pixel_values", "token_type_ids"),
        padding_side="right",
        notes="Prefix-LM: image tokens come first, before <bos>; bidirectional attention over the prefix.",
    ),
    ArchitectureTable(
        model_type="internvl",
        model_class="InternVLForConditionalGeneration",
        modality_tokens=_IMAGE_VIDEO,
        marker_strings=("<img>", "</img>"),
        notes="Images are wrapped as <img><IMG_CONTEXT>...</img>; tiles are concatenated in one span.",
    ),
    ArchitectureTable(model_type="idefics3", model_class="Idefics3ForConditionalGeneration", **_IDEFICS),
    ArchitectureTable(model_type="smolvlm", model_class="SmolVLMForConditionalGeneration", **_IDEFICS),
    ArchitectureTable(
        model_type="qwen2_audio",
        model_class="Qwen2AudioForConditionalGeneration",
        modality_tokens={"audio": ("audio_token_id", "audio_token_index")},
        marker_strings=("<|audio_bos|>", "<|audio_eos|>"),
        extra_inputs=("input_features", "feature_attention_mask"),
        notes="Whisper-style audio encoder; <|AUDIO|> placeholders carry the audio features.",
    ),
    ArchitectureTable(
        model_type="mllama",
        model_class="MllamaForConditionalGeneration",
        modality_tokens={},
        marker_strings=("<|image|>",),
        extra_inputs=("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"),
        visual_path="cross_attention",
        notes="Image features enter through cross-attention layers, not the decoder sequence: the <|image|> "
        "token keeps its ordinary embedding (so it is a template token here) and marks where text starts "
        "attending to the image through cross-attention.",
    ),
)
TABLES = MappingProxyType({t.model_type: t for t in _ENTRIES})
