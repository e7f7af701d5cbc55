"""Build the parts of an organism: word-level tokenizer, ``LlavaProcessor``, config and model, and
the processor inputs of ``organism:shapes`` items (:func:`encode`, :func:`answer_ids`).

Everything is built offline from transformers' own classes:
``LlavaForConditionalGeneration`` = CLIP vision tower (32 px, patch 8 → 16 image tokens, 2 layers)
+ LLaVA projector + Llama decoder (``N_LAYERS`` = 6 layers, hidden 128, FFN 256, 4 heads).

Initialisation follows docs/organisms.md: decoder and projector Linear/Embedding ~ N(0, 0.08)
(≈ 1/√d; the default 0.02 stays at chance) and 2-D sin-cos ViT position embeddings (CLIP's
default is ~14× weaker than the patch signal). The sin-cos base is 10, not MAE's 10000: on a 4×4
grid base 10000 leaves most frequencies flat; measured on shape_left/color_left after 300 steps,
base 10 gave 0.85/1.00 against 0.73/1.00.
"""

from __future__ import annotations

import math

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mech.organisms import shapes

__all__ = [
    "CHAT_TEMPLATE",
    "HIDDEN",
    "INIT_STD",
    "N_IMAGE_TOKENS",
    "N_LAYERS",
    "PATCH",
    "SINCOS_BASE",
    "SPECIALS",
    "answer_ids",
    "build_config",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "encode",
    "sincos_2d",
    "vocabulary",
]

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<image>"]
N_LAYERS = 6
HIDDEN = 128
PATCH = 8
N_IMAGE_TOKENS = (shapes.IMAGE_SIZE // PATCH) ** 2  # 16
INIT_STD = 0.08
SINCOS_BASE = 10.0

#: jinja chat template; renders exactly ``shapes.format_prompt`` (BOS comes from the tokenizer)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}user :"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %} <image>{% elif c['type'] == 'text' %} {{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% elif message['role'] == 'assistant' %} assistant :"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %} {{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} assistant :{% endif %}"
)

# words of the MMMU-Pro standard prompt and option lists, so option-style prompts tokenize too
_MMMU_WORDS = "options answer with the option letter from given choices directly . : " + " ".join(
    shapes.OPTION_LETTERS.lower()
)


def vocabulary() -> list[str]:
    """Specials first (ids 0..4), then every word the generator, prompts and templates use."""
    words: list[str] = []
    texts = [
        shapes.question_text(t, s, c)
        for t in shapes.TEMPLATES
        for s in shapes.SHAPES
        for c in shapes.COLOR_NAMES
    ]
    texts += [" ".join(shapes.ANSWER_WORDS), "user : assistant :", shapes.BASIC_PROMPT, _MMMU_WORDS]
    pre = pre_tokenizers.Whitespace()
    for text in texts:
        for w, _ in pre.pre_tokenize_str(text.lower()):
            if w not in words:
                words.append(w)
    return SPECIALS + words


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, lower-casing tokenizer; adds ``<bos>``; pads on the left (answer = last)."""
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_processor() -> LlavaProcessor:
    """``LlavaProcessor`` (CLIP image processor at 32 px, no crop change) with ``CHAT_TEMPLATE``."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": shapes.IMAGE_SIZE},
        crop_size={"height": shapes.IMAGE_SIZE, "width": shapes.IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )


def build_config(n_layers: int = N_LAYERS, vocab_size: int | None = None) -> LlavaConfig:
    """The LLaVA config of an organism (``n_layers`` decoder layers)."""
    tok = build_tokenizer()
    vocab_size = vocab_size or len(tok)
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=shapes.IMAGE_SIZE,
        patch_size=PATCH,
        initializer_range=INIT_STD,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        initializer_range=INIT_STD,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=N_IMAGE_TOKENS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def sincos_2d(grid: int, dim: int, base: float | None = None) -> torch.Tensor:
    """2-D sin-cos position table [grid*grid, dim] (row-major patches), MAE style.

    ``base`` sets the slowest wavelength; a small grid wants a small base so that most
    frequencies vary across its few positions.
    """
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    base = SINCOS_BASE if base is None else base
    quarter = dim // 4
    omega = 1.0 / (base ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    parts = []
    for pos in (ys.flatten(), xs.flatten()):
        ang = pos[:, None] * omega[None, :]
        parts += [torch.sin(ang), torch.cos(ang)]
    return torch.cat(parts, dim=1)


def build_model(
    seed: int = 0, n_layers: int = N_LAYERS, vision_init: str = "clip"
) -> LlavaForConditionalGeneration:
    """A freshly initialised organism (deterministic from ``seed``), eager attention, fp32.

    Decoder and projector Linear/Embedding ~ N(0, 0.08); the vision tower keeps CLIP's own
    initialisation (``vision_init="clip"``) or is drawn at N(0, 0.08) too (``"normal"``).
    """
    torch.manual_seed(seed)
    config = build_config(n_layers)
    config._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        skip = set() if vision_init == "normal" else set(model.model.vision_tower.modules())
        for module in model.modules():
            if module in skip:
                continue
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, INIT_STD)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        emb = model.model.vision_tower.embeddings
        table = torch.zeros_like(emb.position_embedding.weight)
        table[1:] = sincos_2d(int(math.isqrt(N_IMAGE_TOKENS)), table.shape[1])
        emb.position_embedding.weight.copy_(table)
    return model


def encode(processor, samples: list[dict], question: str | None = "sample", image: str = "sample") -> dict:
    """Processor inputs for ``samples`` (left-padded; the answer is predicted at position -1).

    ``question``: ``"sample"`` (each item's question), a fixed string (e.g. the basic prompt),
    or None (no text). ``image``: ``"sample"`` (item's image, dropped ones stay dropped),
    ``"white"``/``"black"`` (replaced, same size), or ``"none"`` (removed from the prompt).
    """
    from PIL import Image

    texts, images = [], []
    for s in samples:
        q = s["question"] if question == "sample" else question
        img = None if image == "none" else s["image"]
        if img is not None and image in ("white", "black"):
            img = Image.new("RGB", img.size, (255, 255, 255) if image == "white" else (0, 0, 0))
        texts.append(shapes.format_prompt(q, image=img is not None))
        if img is not None:
            images.append(img)
    return dict(processor(images=images or None, text=texts, padding=True, return_tensors="pt"))


def answer_ids(tokenizer) -> torch.Tensor:
    """Token ids of ``shapes.ANSWER_WORDS`` (same order)."""
    return torch.tensor(tokenizer.convert_tokens_to_ids(list(shapes.ANSWER_WORDS)))
