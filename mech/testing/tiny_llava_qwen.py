"""Tiny builders of the LLaVA family (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision) and the Qwen-VL family
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL): processor with the family's chat template, and config with the
modality token ids read from the tokenizer. Collected in :data:`mech.testing.tiny_families.BUILDERS`."""

from __future__ import annotations

import transformers as T

from .tiny_configs import FamilyBuilder, H, clip_config, ids_of, siglip_config, text_config
from .tiny_templates import TEMPLATES
from .tiny_tokenizer import make_tokenizer
from .tiny_video import NoVideoProcessor

__all__ = ["BUILDERS"]


# ----------------------------------------------------------------------------- llava family
def _proc_llava():
    tok = make_tokenizer(
        ["<image>", "USER:", "ASSISTANT:"],
        named={"image_token": "<image>"},
        bos="<s>",
        eos="</s>",
        pad="<pad>",
    )
    # USER:/ASSISTANT: are whole special tokens so the template's role markers are single tokens
    ip = T.LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return T.LlavaProcessor(
        ip,
        tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATES["llava"],
    )


def _cfg_llava(proc):
    return T.LlavaConfig(
        vision_config=clip_config(32),
        text_config=dict(text_config(proc), model_type="llama"),
        image_token_index=proc.image_token_id,
        image_seq_length=16,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _proc_llava_next():
    tok = make_tokenizer(
        ["<image>", "[INST]", "[/INST]"],
        named={"image_token": "<image>"},
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        padding_side="left",
    )
    ip = T.LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=_PINPOINTS
    )
    return T.LlavaNextProcessor(
        ip,
        tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATES["llava_next"],
    )


def _cfg_llava_next(proc):
    return T.LlavaNextConfig(
        vision_config=clip_config(32),
        text_config=dict(text_config(proc), model_type="llama"),
        image_token_index=proc.image_token_id,
        image_grid_pinpoints=_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=16,
    )


def _proc_llava_onevision():
    tok = make_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        named={"image_token": "<image>", "video_token": "<video>"},
        eos="<|im_end|>",
        pad="<|endoftext|>",
        padding_side="left",
    )
    ip = T.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=_PINPOINTS)
    vp = NoVideoProcessor("LlavaOnevisionVideoProcessor")
    return T.LlavaOnevisionProcessor(
        ip,
        tok,
        vp,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=TEMPLATES["llava_onevision"],
    )


def _cfg_llava_onevision(proc):
    return T.LlavaOnevisionConfig(
        vision_config=siglip_config(32),
        text_config=dict(text_config(proc), model_type="qwen2"),
        image_token_index=proc.image_token_id,
        video_token_index=proc.video_token_id,
        image_grid_pinpoints=_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )


# ----------------------------------------------------------------------------- qwen-vl family
_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _proc_qwen(cls_name: str, family: str, video_cls: str, patch: int = 8):
    def build():
        tok = make_tokenizer(
            _QWEN_SPECIALS,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            named={
                "image_token": "<|image_pad|>",
                "video_token": "<|video_pad|>",
                "vision_start_token": "<|vision_start|>",
                "vision_end_token": "<|vision_end|>",
            },
        )
        ip = T.Qwen2VLImageProcessorPil(
            patch_size=patch,
            merge_size=2,
            temporal_patch_size=2,
            size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
        )
        vp = NoVideoProcessor(video_cls)
        vp.patch_size = patch
        return getattr(T, cls_name)(ip, tok, vp, chat_template=TEMPLATES[family])

    return build


def _qwen_ids(proc) -> dict:
    return dict(
        image_token_id=proc.image_token_id,
        video_token_id=proc.video_token_id,
        **ids_of(
            proc.tokenizer, vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>"
        ),
    )


def _mrope(interleaved: bool = False) -> dict:
    # head_dim 8 -> 4 rotary frequencies split over (t, h, w)
    d = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    if interleaved:
        d["mrope_interleaved"] = True
    return d


def _cfg_qwen2_vl(proc):
    return T.Qwen2VLConfig(
        text_config=text_config(proc, rope_parameters=_mrope()),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=H,
            mlp_ratio=2,
            num_heads=4,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **_qwen_ids(proc),
    )


def _cfg_qwen2_5_vl(proc):
    return T.Qwen2_5_VLConfig(
        text_config=text_config(proc, rope_parameters=_mrope()),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=32,
            out_hidden_size=H,
            fullatt_block_indexes=[1],
        ),
        **_qwen_ids(proc),
    )


def _cfg_qwen3_vl(proc):
    return T.Qwen3VLConfig(
        text_config=text_config(proc, num_hidden_layers=3, head_dim=8, rope_parameters=_mrope(True)),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=H,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0, 1],
        ),
        **_qwen_ids(proc),
    )


BUILDERS: dict[str, FamilyBuilder] = {
    "llava": FamilyBuilder(_proc_llava, _cfg_llava, "LlavaForConditionalGeneration"),
    "llava_next": FamilyBuilder(_proc_llava_next, _cfg_llava_next, "LlavaNextForConditionalGeneration"),
    "llava_onevision": FamilyBuilder(
        _proc_llava_onevision, _cfg_llava_onevision, "LlavaOnevisionForConditionalGeneration"
    ),
    "qwen2_vl": FamilyBuilder(
        _proc_qwen("Qwen2VLProcessor", "qwen2_vl", "Qwen2VLVideoProcessor"),
        _cfg_qwen2_vl,
        "Qwen2VLForConditionalGeneration",
    ),
    "qwen2_5_vl": FamilyBuilder(
        _proc_qwen("Qwen2_5_VLProcessor", "qwen2_5_vl", "Qwen2VLVideoProcessor"),
        _cfg_qwen2_5_vl,
        "Qwen2_5_VLForConditionalGeneration",
    ),
    "qwen3_vl": FamilyBuilder(
        _proc_qwen("Qwen3VLProcessor", "qwen3_vl", "Qwen3VLVideoProcessor"),
        _cfg_qwen3_vl,
        "Qwen3VLForConditionalGeneration",
    ),
}
