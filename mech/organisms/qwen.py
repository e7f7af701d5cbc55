"""Build the parts of a Qwen2.5-VL organism: word-level tokenizer with Qwen's special tokens,
``Qwen2_5_VLProcessor`` (``Qwen2VLImageProcessorPil``, patch 8, 2×2 merge), config and model, and
the processor inputs of ``organism:shapes-varied`` items (:func:`encode`).

Everything is transformers' own classes, at a tiny size (docs/organisms.md, "The Qwen2.5-VL
organisms"): ``Qwen2_5_VLForConditionalGeneration`` = Qwen2.5-VL vision transformer (patch 8,
temporal patch 2, 2-D rotary, window attention in block 0 and full attention in block 1, 2×2 patch
merger; hidden 64, FFN 128) + Qwen2 decoder with M-RoPE (``N_LAYERS`` = 4 layers, hidden 64,
FFN 256, 4 query and 2 key/value heads, head dim 16, ``mrope_section`` [2, 3, 3]: the real
[16, 24, 24] scaled to 8 rotary frequencies; rope θ 4, ``ROPE_THETA``: at Qwen's 10,000 the width
section could not tell image columns apart). Hidden 64 rather than the LLaVA organisms' 128: on
the shared 2-core machine (one torch thread, under load) a batch-64 step of a patch-4 version took
0.28 s of CPU at 64, 0.45 s at 96 and 0.9-1.0 s of wall time at 128. An image of w×h px is
(w/16)·(h/16) decoder tokens (dynamic resolution: patch 8, 2×2 merge), and its tokens carry 3-D
(t, h, w) positions.

Initialisation follows the LLaVA organisms: every Linear/Embedding ~ N(0, 1/√d) = N(0, 0.125) (the
vision transformer's too, its patch convolution keeps torch's default). Qwen's vision transformer
has no learned position table (2-D rotary), so the LLaVA organisms' sin-cos trick does not apply.
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
)

from mech.organisms import shapes, varied

__all__ = [
    "CHAT_TEMPLATE",
    "HIDDEN",
    "INIT_STD",
    "MAX_PIXELS",
    "MERGE",
    "MIN_PIXELS",
    "N_LAYERS",
    "PATCH",
    "ROPE_THETA",
    "SPECIALS",
    "SYSTEM",
    "VISION_HIDDEN",
    "build_config",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "encode",
    "mrope_section",
    "prompt_text",
    "vocabulary",
]

SPECIALS = [
    "<|endoftext|>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
N_LAYERS = 4
HIDDEN = 64
VISION_HIDDEN = 64
PATCH = 8
MERGE = 2
INIT_STD = HIDDEN**-0.5  # 0.125
#: the decoder's rotary base. M-RoPE gives the (t, h, w) sections the highest, middle and lowest of the
#: head's 8 frequencies; at 10,000 the w section turns 0.003 rad per image column, so the decoder could not
#: tell columns apart, and nor could the 2-layer vision tower (a linear probe of its output told the left
#: shape's token from the right one's at chance): left/right questions stayed at guessing through 3,000
#: steps. At 4 the w section turns 0.30-0.42 rad per column, h 0.50-0.71 per row (docs/organisms.md)
ROPE_THETA = 4.0
SYSTEM = "You are a helpful assistant."
MIN_PIXELS = (PATCH * MERGE) ** 2 * 4  # 2×2 merged tokens
MAX_PIXELS = 64 * 64

#: Qwen2.5-VL's chat template (images first as <|vision_start|><|image_pad|><|vision_end|>),
#: without the default system turn (11 tokens a row: the organisms train on 2 CPU cores; a system
#: turn given in the messages is rendered) and without the video and tool branches
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# words of the MMMU-Pro prompts, so option-style prompts tokenize too
_EXTRA = (
    "options answer with the option letter from given choices directly . : "
    "answer the question using a single word or phrase . user assistant system "
    + " ".join(shapes.OPTION_LETTERS.lower())
)


def _pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n|[^\w\s]"), behavior="isolated"),
        ]
    )


def vocabulary() -> list[str]:
    """Specials first, then ``\\n`` and every word of the wordings, prompts and answers."""
    texts = [
        w.format(shape=s, color=c)
        for ws in varied.WORDINGS.values()
        for w in ws
        for s in shapes.SHAPES
        for c in shapes.COLOR_NAMES
    ]
    texts += [" ".join(shapes.ANSWER_WORDS), shapes.BASIC_PROMPT, SYSTEM, _EXTRA]
    words = ["\n"]
    pre = _pre_tokenizer()
    for text in texts:
        for w, _ in pre.pre_tokenize_str(text.lower()):
            if w not in words:
                words.append(w)
    return SPECIALS + words


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, lower-casing tokenizer with Qwen's special tokens; no BOS (as Qwen); left pad."""
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )


def build_processor() -> Qwen2_5_VLProcessor:
    """``Qwen2_5_VLProcessor``: ``Qwen2VLImageProcessorPil`` (patch 8, merge 2, temporal patch 2,
    min/max pixels so that every ``varied.CANVASES`` size is kept as it is), ``CHAT_TEMPLATE``."""
    ip = Qwen2VLImageProcessorPil(
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=2,
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    )
    # the video slot: a stand-in saved as Qwen2VLVideoProcessor (the real one needs torchvision);
    # with torchvision, from_pretrained builds the real one, without, mech.load leaves it out
    from mech.testing.tiny_families import NoVideoProcessor, video_slot_ok

    vp = NoVideoProcessor("Qwen2VLVideoProcessor")
    vp.patch_size = PATCH
    with video_slot_ok():
        return Qwen2_5_VLProcessor(
            image_processor=ip, tokenizer=build_tokenizer(), video_processor=vp, chat_template=CHAT_TEMPLATE
        )


def mrope_section(head_dim: int) -> list[int]:
    """(t, h, w) split of the ``head_dim // 2`` rotary frequencies in Qwen2.5-VL's proportion
    (its [16, 24, 24] of 64): [4, 6, 6] for head dim 32, [2, 3, 3] for 16."""
    n = head_dim // 2
    t = n // 4
    h = (n - t) // 2
    return [t, h, n - t - h]


def build_config(n_layers: int = N_LAYERS) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL config of an organism (``n_layers`` decoder layers)."""
    tok = build_tokenizer()
    ids = {
        k: tok.convert_tokens_to_ids(v)
        for k, v in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    text = dict(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=INIT_STD,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": ROPE_THETA,
            "mrope_section": mrope_section(HIDDEN // 4),
        },
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
    )
    vision = dict(
        depth=2,
        hidden_size=VISION_HIDDEN,
        intermediate_size=2 * VISION_HIDDEN,
        num_heads=4,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        temporal_patch_size=2,
        window_size=32,
        fullatt_block_indexes=[1],
        out_hidden_size=HIDDEN,
        initializer_range=INIT_STD,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_model(seed: int = 0, n_layers: int = N_LAYERS) -> Qwen2_5_VLForConditionalGeneration:
    """A freshly initialised organism (deterministic from ``seed``), eager attention, fp32."""
    torch.manual_seed(seed)
    config = build_config(n_layers)
    config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, INIT_STD)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return model


def prompt_text(processor, question: str | None, n_images: int) -> str:
    """The chat-template text of one user turn (``n_images`` images, then the question), with the
    generation prompt: exactly what ``mech.prepare.inputs.prepare`` builds."""
    content = [{"type": "image"} for _ in range(n_images)]
    if question:
        content.append({"type": "text", "text": question})
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def encode(processor, samples: list[dict], question: str | None = "sample", image: str = "sample") -> dict:
    """Processor inputs for ``samples`` (left-padded; the answer is predicted at position -1).

    ``question``: ``"sample"``, a fixed string (the basic prompt) or None; ``image``:
    ``"sample"``, ``"white"``/``"black"`` (every image replaced, same size) or ``"none"``.
    """
    from PIL import Image

    texts, images = [], []
    for s in samples:
        q = s["question"] if question == "sample" else question
        imgs = [] if image == "none" else list(s["images"])
        if image in ("white", "black"):
            fill = (255, 255, 255) if image == "white" else (0, 0, 0)
            imgs = [Image.new("RGB", im.size, fill) for im in imgs]
        texts.append(prompt_text(processor, q, len(imgs)))
        images += imgs
    return dict(processor(images=images or None, text=texts, padding=True, return_tensors="pt"))
