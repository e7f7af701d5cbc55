"""The two 7B MLLMs of the GPU benchmark, built from their published configs with random weights, and
synthetic processor-shaped inputs for them (``benchmarks/gpu.py``).

* Qwen2.5-VL-7B-Instruct (``configs/qwen2_5_vl_7b.json``) and LLaVA-1.5-7B (``configs/llava_1_5_7b.json``),
  both copied from the Hugging Face Hub's ``config.json``. ``--dry-run`` builds the same config classes
  with every width and depth cut down (:func:`scaled`); the token ids, vocabulary, patch and merge sizes,
  RoPE type and vision-feature layer stay the real ones, so the same code path runs.
* Inputs are what the processors would give, built directly: ``input_ids`` with the right number of image
  placeholder tokens, ``pixel_values`` (and Qwen's ``image_grid_thw``) of the matching shape, left padding.
  Qwen2.5-VL: one image of ``h × w`` patches of 14 px gives ``h·w/4`` image tokens (2×2 merge); LLaVA-1.5:
  every 336 px image gives 576 tokens, so a length is reached with several images.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parent / "configs"
FAMILIES = {
    "qwen2_5_vl": ("qwen2_5_vl_7b.json", "Qwen2_5_VLForConditionalGeneration", "Qwen2.5-VL-7B"),
    "llava": ("llava_1_5_7b.json", "LlavaForConditionalGeneration", "LLaVA-1.5-7B"),
}
N_TEXT = 32  # question tokens after the image(s)
N_TEMPLATE = 8  # template tokens before the image(s)
WHITE = 1.9  # a white pixel after CLIP's normalisation, (1 - 0.48) / 0.27


def config(family: str):
    """The published config (a transformers config object) of ``family``."""
    import transformers as T

    raw = json.loads((CONFIGS / FAMILIES[family][0]).read_text())
    raw.pop("_source", None)
    return T.AutoConfig.for_model(**raw)


def _shrink_vocab(cfg, vocab: int) -> None:
    """Vocabulary cut to ``vocab``, every special token id (``*_token_id`` / ``*_token_index``) outside it moved
    to the same distance from the top, so the ids keep their layout and stay inside the vocabulary."""
    for c in {id(x): x for x in (cfg, cfg.get_text_config())}.values():
        old = getattr(c, "vocab_size", None) or cfg.get_text_config().vocab_size
        for key, val in list(vars(c).items()):
            if (
                (key.endswith("_token_id") or key.endswith("_token_index"))
                and isinstance(val, int)
                and val >= vocab
            ):
                setattr(c, key, vocab - (old - val))
        if getattr(c, "vocab_size", None) is not None:
            c.vocab_size = vocab


def scaled(
    family: str,
    cfg,
    *,
    text_layers: int = 2,
    hidden: int | None = 64,
    vision_layers: int = 2,
    vocab: int = 4096,
):
    """A copy of ``cfg`` with the decoder cut to ``text_layers`` and, unless ``hidden`` is None, every width
    and the vocabulary (to ``vocab``, special ids moved along: :func:`_shrink_vocab`) cut down; ``hidden=None``
    keeps the real widths and vocabulary (a truncated real-width model). Patch and merge sizes, RoPE type,
    GQA, window attention and the vision-feature layer are kept."""
    cfg = copy.deepcopy(cfg)
    t, v = cfg.get_text_config(), cfg.vision_config
    t.num_hidden_layers = text_layers
    if getattr(t, "layer_types", None) is not None:
        t.layer_types = t.layer_types[:text_layers]
    if family == "qwen2_5_vl":
        v.depth = vision_layers
        v.fullatt_block_indexes = [vision_layers - 1]
    else:  # vision_feature_layer = -2 needs at least two CLIP layers
        v.num_hidden_layers = max(vision_layers, 3)
    if hidden is None:
        return cfg
    _shrink_vocab(cfg, vocab)
    t.hidden_size, t.intermediate_size, t.num_attention_heads, t.head_dim = hidden, 2 * hidden, 4, hidden // 4
    t.num_key_value_heads = 2 if family == "qwen2_5_vl" else 4
    v.hidden_size, v.intermediate_size = hidden, 2 * hidden
    if family == "qwen2_5_vl":
        half = (
            t.head_dim // 2
        )  # mrope sections cover head_dim / 2 frequencies, in the real 16:24:24 proportion
        t.rope_parameters["mrope_section"] = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
        v.num_heads, v.out_hidden_size = 2, hidden
    else:
        v.num_attention_heads, v.projection_dim, v.image_size = 2, hidden, 56  # 4×4 patches of 14 px
    return cfg


def n_params(family: str, cfg) -> int:
    """Parameters of the model ``cfg`` describes, counted on the meta device (no memory, milliseconds)."""
    import transformers as T

    with torch.device("meta"):
        model = getattr(T, FAMILIES[family][1])._from_config(cfg, dtype=torch.bfloat16)
    return sum(p.numel() for p in model.parameters())


def build(family: str, cfg, device: str, dtype: torch.dtype):
    """``(MechModel, seconds)``: the model of ``cfg`` built directly on ``device`` in ``dtype`` with
    transformers' own random initialisation (on a GPU this takes seconds, not minutes), SDPA attention."""
    import transformers as T

    import mech

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = (
            getattr(T, FAMILIES[family][1])._from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
        )
    if device == "cuda":
        torch.cuda.synchronize()
    return mech.load((model, None)), time.perf_counter() - t0


def tokens_per_image(family: str, cfg) -> int:
    v = cfg.vision_config
    return (v.image_size // v.patch_size) ** 2 if family == "llava" else 0


@dataclass(frozen=True)
class Images:
    """One sample's images: Qwen: patch grids ``[(h, w), ...]`` (even sides); LLaVA: a count of images."""

    grids: tuple[tuple[int, int], ...] = ()
    count: int = 0

    def tokens(self, family: str, cfg) -> int:
        if family == "llava":
            return self.count * tokens_per_image(family, cfg)
        return sum(h * w // 4 for h, w in self.grids)


def images_for(family: str, cfg, visual_tokens: int, aspect: float = 1.0) -> Images:
    """The images giving about ``visual_tokens`` image tokens: Qwen, one image of aspect ``aspect`` (w/h);
    LLaVA, the nearest whole number of 336 px images."""
    if family == "llava":
        return Images(count=max(1, round(visual_tokens / tokens_per_image(family, cfg))))
    h = max(1, round(math.sqrt(visual_tokens / aspect)))
    w = max(1, round(visual_tokens / h))
    return Images(grids=((2 * h, 2 * w),))


def synthetic(family: str, cfg, samples: list[Images], *, seed: int = 0, pixels: str = "random") -> dict:
    """Raw processor-shaped inputs ``[batch, pos]``, left-padded: ``[template × 8, <image block> per image,
    question × 32]`` per sample; ``pixels="random"`` (N(0, 1)) or ``"white"`` (a constant white image of the
    same size, the same seed's ids)."""
    g = torch.Generator().manual_seed(seed)
    text_hi = min(cfg.get_text_config().vocab_size - 512, 30000)  # below every special token id
    rows, pix, grids = [], [], []
    for s in samples:
        ids = [torch.randint(100, text_hi, (N_TEMPLATE,), generator=g)]
        if family == "qwen2_5_vl":
            for h, w in s.grids:
                ids += [
                    torch.tensor([cfg.vision_start_token_id]),
                    torch.full((h * w // 4,), cfg.image_token_id),
                    torch.tensor([cfg.vision_end_token_id]),
                ]
                pix.append(torch.randn(h * w, 3 * 2 * 14 * 14, generator=g))
                grids.append([1, h, w])
        else:
            size = cfg.vision_config.image_size
            for _ in range(s.count):
                ids.append(torch.full((tokens_per_image(family, cfg),), cfg.image_token_index))
                pix.append(torch.randn(1, 3, size, size, generator=g))
        ids.append(torch.randint(100, text_hi, (N_TEXT,), generator=g))
        rows.append(torch.cat(ids))
    width = max(len(r) for r in rows)
    pad = (
        cfg.pad_token_id
        if getattr(cfg, "pad_token_id", None) is not None
        else cfg.get_text_config().bos_token_id
    )
    input_ids = torch.full((len(rows), width), pad or 0, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    pixel_values = torch.cat(pix)
    if pixels == "white":
        pixel_values = torch.full_like(pixel_values, WHITE)
    out = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values}
    if family == "qwen2_5_vl":
        out["image_grid_thw"] = torch.tensor(grids)
    return out
