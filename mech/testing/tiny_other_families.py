"""Tiny builders of Gemma 3, PaliGemma, InternVL, Idefics3, SmolVLM, Qwen2-Audio and Mllama (cross-
attention): processor with the family's chat template, and config with the modality token ids read
from the tokenizer. Collected in :data:`mech.testing.tiny_families.BUILDERS`."""

from __future__ import annotations

import transformers as T

from .tiny_configs import VIS, FamilyBuilder, H, siglip_config, text_config, vocab_size
from .tiny_templates import TEMPLATES
from .tiny_tokenizer import make_tokenizer
from .tiny_video import NoVideoProcessor

__all__ = ["BUILDERS"]


# ----------------------------------------------------------------------------- gemma3 / paligemma
def _proc_gemma3():
    tok = make_tokenizer(
        ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        add_bos=False,
        named={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    ip = T.Gemma3ImageProcessorPil(size={"height": 64, "width": 64}, do_pan_and_scan=False)
    return T.Gemma3Processor(ip, tok, image_seq_length=16, chat_template=TEMPLATES["gemma3"])


def _cfg_gemma3(proc):
    tok = proc.tokenizer
    text = text_config(
        proc,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
    )
    return T.Gemma3Config(
        text_config=text,
        vision_config=siglip_config(64),
        mm_tokens_per_image=16,
        image_token_index=tok.image_token_id,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
    )


def _proc_paligemma():
    tok = make_tokenizer(
        ["<image>"], bos="<bos>", eos="<eos>", pad="<pad>", add_bos=False, named={"image_token": "<image>"}
    )
    ip = T.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    return T.PaliGemmaProcessor(ip, tok, chat_template=TEMPLATES["paligemma"])


def _cfg_paligemma(proc):
    text = dict(text_config(proc, head_dim=8), model_type="gemma")
    return T.PaliGemmaConfig(
        vision_config=dict(siglip_config(32), projection_dim=H),
        text_config=text,
        image_token_index=proc.image_token_id,
        projection_dim=H,
        hidden_size=H,
        vocab_size=vocab_size(proc),
    )


# ----------------------------------------------------------------------------- internvl
def _proc_internvl():
    tok = make_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        eos="<|im_end|>",
        pad="<|endoftext|>",
        padding_side="left",
        named={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    ip = T.GotOcr2ImageProcessorPil(size={"height": 64, "width": 64}, crop_to_patches=False)
    return T.InternVLProcessor(
        ip,
        tok,
        NoVideoProcessor("InternVLVideoProcessor"),
        image_seq_length=16,
        chat_template=TEMPLATES["internvl"],
    )


def _cfg_internvl(proc):
    vision = dict(VIS, image_size=[64, 64], patch_size=[8, 8])
    return T.InternVLConfig(
        vision_config=vision,
        text_config=dict(text_config(proc), model_type="qwen2"),
        image_token_id=proc.image_token_id,
        image_seq_length=16,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
    )


# ----------------------------------------------------------------------------- idefics3 / smolvlm
_IDEFICS_SPECIALS = [
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]


def _proc_idefics3():
    tok = make_tokenizer(
        ["<|begin_of_text|>", *_IDEFICS_SPECIALS],
        bos="<|begin_of_text|>",
        eos="<end_of_utterance>",
        pad="<pad>",
        padding_side="left",
    )
    ip = T.Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    return T.Idefics3Processor(ip, tok, image_seq_len=4, chat_template=TEMPLATES["idefics3"])


def _cfg_idefics_like(config_cls, proc):
    """Idefics3 and SmolVLM share their config layout: SigLIP-style tower, Llama text model."""
    return config_cls(
        vision_config=dict(VIS, image_size=32, patch_size=8),
        text_config=dict(text_config(proc), model_type="llama"),
        image_token_id=proc.image_token_id,
        scale_factor=2,
        pad_token_id=proc.tokenizer.pad_token_id,
    )


def _cfg_idefics3(proc):
    return _cfg_idefics_like(T.Idefics3Config, proc)


def _proc_smolvlm():
    tok = make_tokenizer(
        ["<|im_start|>", *_IDEFICS_SPECIALS, "<video>"],
        bos="<|im_start|>",
        eos="<end_of_utterance>",
        pad="<pad>",
        padding_side="left",
        named={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "video_token": "<video>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )
    ip = T.SmolVLMImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    return T.SmolVLMProcessor(
        ip,
        tok,
        NoVideoProcessor("SmolVLMVideoProcessor"),
        image_seq_len=4,
        chat_template=TEMPLATES["smolvlm"],
    )


def _cfg_smolvlm(proc):
    return _cfg_idefics_like(T.SmolVLMConfig, proc)


# ----------------------------------------------------------------------------- qwen2_audio
def _proc_qwen2_audio():
    tok = make_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"],
        eos="<|im_end|>",
        pad="<|endoftext|>",
        padding_side="left",
        named={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    )
    fe = T.WhisperFeatureExtractor(
        feature_size=16, sampling_rate=16000, hop_length=160, chunk_length=1, n_fft=400
    )
    return T.Qwen2AudioProcessor(fe, tok, chat_template=TEMPLATES["qwen2_audio"])


def _cfg_qwen2_audio(proc):
    audio = dict(
        num_mel_bins=16,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        d_model=32,
        max_source_positions=50,
    )
    return T.Qwen2AudioConfig(
        audio_config=audio,
        text_config=dict(text_config(proc), model_type="qwen2"),
        audio_token_index=proc.audio_token_id,
    )


# ----------------------------------------------------------------------------- mllama
def _proc_mllama():
    tok = make_tokenizer(
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|image|>",
            "<|python_tag|>",
            "<|finetune_right_pad_id|>",
        ],
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        named={"image_token": "<|image|>"},
    )
    ip = T.MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=2)
    return T.MllamaProcessor(ip, tok, chat_template=TEMPLATES["mllama"])


def _cfg_mllama(proc):
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=4,
        image_size=32,
        patch_size=8,
        max_num_tiles=2,
        intermediate_layers_indices=[0, 1],
        vision_output_dim=32 * 3,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    text = text_config(proc, num_hidden_layers=3, cross_attention_layers=[1])
    return T.MllamaConfig(vision_config=vision, text_config=text, image_token_index=proc.image_token_id)


BUILDERS: dict[str, FamilyBuilder] = {
    "gemma3": FamilyBuilder(_proc_gemma3, _cfg_gemma3, "Gemma3ForConditionalGeneration"),
    "internvl": FamilyBuilder(_proc_internvl, _cfg_internvl, "InternVLForConditionalGeneration"),
    "idefics3": FamilyBuilder(_proc_idefics3, _cfg_idefics3, "Idefics3ForConditionalGeneration"),
    "smolvlm": FamilyBuilder(_proc_smolvlm, _cfg_smolvlm, "SmolVLMForConditionalGeneration"),
    "paligemma": FamilyBuilder(_proc_paligemma, _cfg_paligemma, "PaliGemmaForConditionalGeneration"),
    "qwen2_audio": FamilyBuilder(_proc_qwen2_audio, _cfg_qwen2_audio, "Qwen2AudioForConditionalGeneration"),
    "mllama": FamilyBuilder(_proc_mllama, _cfg_mllama, "MllamaForConditionalGeneration"),
}
