"""Per-family builders of the tiny zoo: processor (tokenizer, image processor / feature extractor,
chat template) and config, with the config's modality token ids read from the tokenizer.
Public entry points live in :mod:`mech.testing.tiny`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import transformers as T
from transformers.video_processing_utils import VideoProcessorMixin

from .tiny_templates import TEMPLATES
from .tiny_tokenizer import make_tokenizer

H = 32  # text hidden size
TEXT = dict(hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
VIS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)

# (width, height) of the images tiny_inputs makes per family
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "llava": (32, 32), "llava_next": (64, 48), "llava_onevision": (64, 48),
    "qwen2_vl": (48, 32), "qwen2_5_vl": (48, 32), "qwen3_vl": (48, 32),
    "gemma3": (64, 64), "internvl": (64, 64), "idefics3": (64, 64), "smolvlm": (64, 64),
    "paligemma": (32, 32), "mllama": (32, 32),
}
AUDIO_SECONDS = 0.5


class _NoVideoProcessor(VideoProcessorMixin):
    """Fills the ``video_processor`` slot; the real ones need torchvision, which is not installed.

    It saves under the family's real video processor class (``saved_as``), so that a directory written
    by :func:`mech.testing.tiny.save_tiny` reads like a real checkpoint: with torchvision, transformers
    builds the real video processor from it; without, ``mech.load`` leaves that part out.
    """

    merge_size = 2
    temporal_patch_size = 2
    patch_size = 8
    num_frames = 2
    fps = 1

    def __init__(self, saved_as: str, **kwargs):
        super().__init__(**kwargs)
        self.saved_as = saved_as

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("tiny zoo: video preprocessing needs torchvision")

    preprocess = __call__

    def to_dict(self):
        d = super().to_dict()
        d["video_processor_type"] = d.pop("saved_as")
        return d


#: public name (the Qwen2.5-VL organisms' processor uses it: mech/organisms/qwen.py)
NoVideoProcessor = _NoVideoProcessor


@contextlib.contextmanager
def video_slot_ok():
    """Let a processor with a ``video_processor`` slot be constructed without torchvision.

    Without torchvision, ``transformers`` does not export ``VideoProcessorMixin``, so
    ``ProcessorMixin.check_argument_for_proper_class`` cannot resolve the class name and raises for
    every video-capable processor. For the duration of one constructor call, the video slot is checked
    against the real ``VideoProcessorMixin`` directly; SmolVLM's ``num2words`` (used only to phrase
    video prompts) gets ``str`` as a stand-in. Everything is restored on exit.
    """
    import transformers.models.smolvlm.processing_smolvlm as smol

    original = T.ProcessorMixin.check_argument_for_proper_class
    old_n2w = smol.num2words

    def check(self, argument_name, argument):
        if argument_name == "video_processor" and not hasattr(T, "VideoProcessorMixin"):
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"{type(argument).__name__} is not a VideoProcessorMixin")
            return VideoProcessorMixin
        return original(self, argument_name, argument)

    T.ProcessorMixin.check_argument_for_proper_class = check
    smol.num2words = old_n2w or str
    try:
        yield
    finally:
        T.ProcessorMixin.check_argument_for_proper_class = original
        smol.num2words = old_n2w


@dataclass(frozen=True)
class FamilyBuilder:
    build_processor: Callable[[], T.ProcessorMixin]
    build_config: Callable[[T.ProcessorMixin], T.PretrainedConfig]
    model_class: str


def _ids(tok, **names: str) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


def _vocab(proc) -> int:
    return len(proc.tokenizer)


def _text(proc, **extra) -> dict:
    tok = proc.tokenizer
    d = dict(TEXT, vocab_size=_vocab(proc), pad_token_id=tok.pad_token_id,
             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    d.update(extra)
    return d


def _clip(image_size: int, patch: int = 8) -> dict:
    return dict(VIS, image_size=image_size, patch_size=patch, model_type="clip_vision_model")


def _siglip(image_size: int, patch: int = 8) -> dict:
    return dict(VIS, image_size=image_size, patch_size=patch, model_type="siglip_vision_model")


# ----------------------------------------------------------------------------- llava family
def _proc_llava():
    tok = make_tokenizer(["<image>", "USER:", "ASSISTANT:"], named={"image_token": "<image>"},
                         bos="<s>", eos="</s>", pad="<pad>")
    # USER:/ASSISTANT: are whole special tokens so the template's role markers are single tokens
    ip = T.LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return T.LlavaProcessor(ip, tok, patch_size=8, vision_feature_select_strategy="default",
                            num_additional_image_tokens=1, chat_template=TEMPLATES["llava"])


def _cfg_llava(proc):
    return T.LlavaConfig(vision_config=_clip(32), text_config=dict(_text(proc), model_type="llama"),
                         image_token_index=proc.image_token_id, image_seq_length=16,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)


_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _proc_llava_next():
    tok = make_tokenizer(["<image>", "[INST]", "[/INST]"], named={"image_token": "<image>"},
                         bos="<s>", eos="</s>", pad="<pad>", padding_side="left")
    ip = T.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                      image_grid_pinpoints=_PINPOINTS)
    return T.LlavaNextProcessor(ip, tok, patch_size=8, vision_feature_select_strategy="default",
                                num_additional_image_tokens=1, chat_template=TEMPLATES["llava_next"])


def _cfg_llava_next(proc):
    return T.LlavaNextConfig(vision_config=_clip(32), text_config=dict(_text(proc), model_type="llama"),
                             image_token_index=proc.image_token_id, image_grid_pinpoints=_PINPOINTS,
                             vision_feature_select_strategy="default", vision_feature_layer=-2,
                             image_seq_length=16)


def _proc_llava_onevision():
    tok = make_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                         named={"image_token": "<image>", "video_token": "<video>"},
                         eos="<|im_end|>", pad="<|endoftext|>", padding_side="left")
    ip = T.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=_PINPOINTS)
    vp = _NoVideoProcessor("LlavaOnevisionVideoProcessor")
    return T.LlavaOnevisionProcessor(ip, tok, vp, num_image_tokens=16,
                                     vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                     chat_template=TEMPLATES["llava_onevision"])


def _cfg_llava_onevision(proc):
    return T.LlavaOnevisionConfig(vision_config=_siglip(32), text_config=dict(_text(proc), model_type="qwen2"),
                                  image_token_index=proc.image_token_id, video_token_index=proc.video_token_id,
                                  image_grid_pinpoints=_PINPOINTS, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9")


# ----------------------------------------------------------------------------- qwen-vl family
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]


def _proc_qwen(cls_name: str, family: str, video_cls: str, patch: int = 8):
    def build():
        tok = make_tokenizer(_QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                             named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                    "vision_start_token": "<|vision_start|>",
                                    "vision_end_token": "<|vision_end|>"})
        ip = T.Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                        size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})
        vp = _NoVideoProcessor(video_cls)
        vp.patch_size = patch
        return getattr(T, cls_name)(ip, tok, vp, chat_template=TEMPLATES[family])

    return build


def _qwen_ids(proc) -> dict:
    return dict(image_token_id=proc.image_token_id, video_token_id=proc.video_token_id,
                **_ids(proc.tokenizer, vision_start_token_id="<|vision_start|>",
                       vision_end_token_id="<|vision_end|>"))


def _mrope(interleaved: bool = False) -> dict:
    # head_dim 8 -> 4 rotary frequencies split over (t, h, w)
    d = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    if interleaved:
        d["mrope_interleaved"] = True
    return d


def _cfg_qwen2_vl(proc):
    return T.Qwen2VLConfig(
        text_config=_text(proc, rope_parameters=_mrope()),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=H, mlp_ratio=2, num_heads=4, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2),
        **_qwen_ids(proc))


def _cfg_qwen2_5_vl(proc):
    return T.Qwen2_5_VLConfig(
        text_config=_text(proc, rope_parameters=_mrope()),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=32, out_hidden_size=H,
                           fullatt_block_indexes=[1]),
        **_qwen_ids(proc))


def _cfg_qwen3_vl(proc):
    return T.Qwen3VLConfig(
        text_config=_text(proc, num_hidden_layers=3, head_dim=8, rope_parameters=_mrope(True)),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=H,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        **_qwen_ids(proc))


# ----------------------------------------------------------------------------- gemma3 / paligemma
def _proc_gemma3():
    tok = make_tokenizer(["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                          "<image_soft_token>"], bos="<bos>", eos="<eos>", pad="<pad>", add_bos=False,
                         named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                "eoi_token": "<end_of_image>"})
    ip = T.Gemma3ImageProcessorPil(size={"height": 64, "width": 64}, do_pan_and_scan=False)
    return T.Gemma3Processor(ip, tok, image_seq_length=16, chat_template=TEMPLATES["gemma3"])


def _cfg_gemma3(proc):
    tok = proc.tokenizer
    text = _text(proc, head_dim=8, query_pre_attn_scalar=8, sliding_window=512,
                 layer_types=["sliding_attention", "full_attention"])
    return T.Gemma3Config(text_config=text, vision_config=_siglip(64), mm_tokens_per_image=16,
                          image_token_index=tok.image_token_id, boi_token_index=tok.boi_token_id,
                          eoi_token_index=tok.eoi_token_id)


def _proc_paligemma():
    tok = make_tokenizer(["<image>"], bos="<bos>", eos="<eos>", pad="<pad>", add_bos=False,
                         named={"image_token": "<image>"})
    ip = T.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    return T.PaliGemmaProcessor(ip, tok, chat_template=TEMPLATES["paligemma"])


def _cfg_paligemma(proc):
    text = dict(_text(proc, head_dim=8), model_type="gemma")
    return T.PaliGemmaConfig(vision_config=dict(_siglip(32), projection_dim=H), text_config=text,
                             image_token_index=proc.image_token_id, projection_dim=H, hidden_size=H,
                             vocab_size=_vocab(proc))


# ----------------------------------------------------------------------------- internvl
def _proc_internvl():
    tok = make_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                          "<video>"], eos="<|im_end|>", pad="<|endoftext|>", padding_side="left",
                         named={"start_image_token": "<img>", "end_image_token": "</img>",
                                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    ip = T.GotOcr2ImageProcessorPil(size={"height": 64, "width": 64}, crop_to_patches=False)
    return T.InternVLProcessor(ip, tok, _NoVideoProcessor("InternVLVideoProcessor"), image_seq_length=16,
                               chat_template=TEMPLATES["internvl"])


def _cfg_internvl(proc):
    vision = dict(VIS, image_size=[64, 64], patch_size=[8, 8])
    return T.InternVLConfig(vision_config=vision, text_config=dict(_text(proc), model_type="qwen2"),
                            image_token_id=proc.image_token_id, image_seq_length=16, downsample_ratio=0.5,
                            vision_feature_layer=-1)


# ----------------------------------------------------------------------------- idefics3 / smolvlm
_IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>",
                     *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]


def _proc_idefics3():
    tok = make_tokenizer(["<|begin_of_text|>", *_IDEFICS_SPECIALS], bos="<|begin_of_text|>",
                         eos="<end_of_utterance>", pad="<pad>", padding_side="left")
    ip = T.Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                     do_image_splitting=True)
    return T.Idefics3Processor(ip, tok, image_seq_len=4, chat_template=TEMPLATES["idefics3"])


def _cfg_idefics_like(config_cls, proc):
    """Idefics3 and SmolVLM share their config layout: SigLIP-style tower, Llama text model."""
    return config_cls(vision_config=dict(VIS, image_size=32, patch_size=8),
                      text_config=dict(_text(proc), model_type="llama"), image_token_id=proc.image_token_id,
                      scale_factor=2, pad_token_id=proc.tokenizer.pad_token_id)


def _cfg_idefics3(proc):
    return _cfg_idefics_like(T.Idefics3Config, proc)


def _proc_smolvlm():
    tok = make_tokenizer(["<|im_start|>", *_IDEFICS_SPECIALS, "<video>"], bos="<|im_start|>",
                         eos="<end_of_utterance>", pad="<pad>", padding_side="left",
                         named={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                "global_image_token": "<global-img>", "video_token": "<video>",
                                "end_of_utterance_token": "<end_of_utterance>"})
    ip = T.SmolVLMImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                    do_image_splitting=True)
    return T.SmolVLMProcessor(ip, tok, _NoVideoProcessor("SmolVLMVideoProcessor"), image_seq_len=4,
                              chat_template=TEMPLATES["smolvlm"])


def _cfg_smolvlm(proc):
    return _cfg_idefics_like(T.SmolVLMConfig, proc)


# ----------------------------------------------------------------------------- qwen2_audio
def _proc_qwen2_audio():
    tok = make_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>",
                          "<|audio_eos|>"], eos="<|im_end|>", pad="<|endoftext|>", padding_side="left",
                         named={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                                "audio_eos_token": "<|audio_eos|>"})
    fe = T.WhisperFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, chunk_length=1,
                                   n_fft=400)
    return T.Qwen2AudioProcessor(fe, tok, chat_template=TEMPLATES["qwen2_audio"])


def _cfg_qwen2_audio(proc):
    audio = dict(num_mel_bins=16, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, d_model=32,
                 max_source_positions=50)
    return T.Qwen2AudioConfig(audio_config=audio, text_config=dict(_text(proc), model_type="qwen2"),
                              audio_token_index=proc.audio_token_id)


# ----------------------------------------------------------------------------- mllama
def _proc_mllama():
    tok = make_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>", "<|image|>", "<|python_tag|>", "<|finetune_right_pad_id|>"],
                         bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                         named={"image_token": "<|image|>"})
    ip = T.MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=2)
    return T.MllamaProcessor(ip, tok, chat_template=TEMPLATES["mllama"])


def _cfg_mllama(proc):
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                  attention_heads=4, image_size=32, patch_size=8, max_num_tiles=2,
                  intermediate_layers_indices=[0, 1], vision_output_dim=32 * 3,
                  supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    text = _text(proc, num_hidden_layers=3, cross_attention_layers=[1])
    return T.MllamaConfig(vision_config=vision, text_config=text, image_token_index=proc.image_token_id)


# -----------------------------------------------------------------------------
BUILDERS: dict[str, FamilyBuilder] = {
    "llava": FamilyBuilder(_proc_llava, _cfg_llava, "LlavaForConditionalGeneration"),
    "llava_next": FamilyBuilder(_proc_llava_next, _cfg_llava_next, "LlavaNextForConditionalGeneration"),
    "llava_onevision": FamilyBuilder(_proc_llava_onevision, _cfg_llava_onevision,
                               "LlavaOnevisionForConditionalGeneration"),
    "qwen2_vl": FamilyBuilder(_proc_qwen("Qwen2VLProcessor", "qwen2_vl", "Qwen2VLVideoProcessor"), _cfg_qwen2_vl,
                        "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": FamilyBuilder(_proc_qwen("Qwen2_5_VLProcessor", "qwen2_5_vl", "Qwen2VLVideoProcessor"),
                          _cfg_qwen2_5_vl, "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": FamilyBuilder(_proc_qwen("Qwen3VLProcessor", "qwen3_vl", "Qwen3VLVideoProcessor"), _cfg_qwen3_vl,
                        "Qwen3VLForConditionalGeneration"),
    "gemma3": FamilyBuilder(_proc_gemma3, _cfg_gemma3, "Gemma3ForConditionalGeneration"),
    "internvl": FamilyBuilder(_proc_internvl, _cfg_internvl, "InternVLForConditionalGeneration"),
    "idefics3": FamilyBuilder(_proc_idefics3, _cfg_idefics3, "Idefics3ForConditionalGeneration"),
    "smolvlm": FamilyBuilder(_proc_smolvlm, _cfg_smolvlm, "SmolVLMForConditionalGeneration"),
    "paligemma": FamilyBuilder(_proc_paligemma, _cfg_paligemma, "PaliGemmaForConditionalGeneration"),
    "qwen2_audio": FamilyBuilder(_proc_qwen2_audio, _cfg_qwen2_audio, "Qwen2AudioForConditionalGeneration"),
    "mllama": FamilyBuilder(_proc_mllama, _cfg_mllama, "MllamaForConditionalGeneration"),
}

FAMILIES: tuple[str, ...] = tuple(BUILDERS)
