"""The schema of the declarative architecture table: one frozen entry per model family.

A family's table says *where* things are (module paths), *which* token ids carry which modality
(config attribute names, resolved against the loaded config), which extra inputs the forward
takes, and the quirks an instrument must respect. Shared code reads the table and never branches
on model names: supporting a new family is a new entry in ``mech.models.families``.

Path strings are dotted attribute paths from the ``*ForConditionalGeneration`` model, e.g.
``"model.language_model.layers"``; per-layer paths (``attention``, ``mlp``, norms) are relative
to one decoder layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from mech.errors import ConfigError

__all__ = [
    "DERIVED_SCHEMES",
    "MODALITIES",
    "ArchitectureTable",
    "DerivedScheme",
    "PaddingSide",
    "VisualPath",
    "frozen_mapping",
]

MODALITIES = ("image", "video", "audio")
PaddingSide = Literal["left", "right"]
VisualPath = Literal["decoder_sequence", "cross_attention"]
DerivedScheme = Literal["modality_codes", "image_is_one"]
DERIVED_SCHEMES = ("modality_codes", "image_is_one")


def frozen_mapping(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy of ``mapping`` ({} for None)."""
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ArchitectureTable:
    """Where a family keeps its parts, and which token ids carry which modality.

    Attributes:
        model_type: ``config.model_type`` of the family (the registry key).
        model_class: transformers class name used to load a checkpoint of this family.
        language_model: path of the decoder (the module holding ``layers`` and ``norm``).
        layers: path of the ``nn.ModuleList`` of decoder layers.
        embed: path of the token embedding (decoder input, before modality features are merged).
        ln_final: path of the final norm applied before the unembedding.
        unembed: path of the unembedding (``lm_head``).
        attn: per-layer path of the self-attention module.
        mlp: per-layer path of the MLP.
        ln1 / ln2: per-layer paths of the norms before attention and before the MLP
            (TransformerLens' names).
        attn_post_norm / mlp_post_norm: per-layer paths of norms applied to the attention / MLP
            output *before* it is added to the residual stream (Gemma3's "sandwich" norms), or None.
        o_proj: path of the attention output projection, relative to ``attn``.
        mlp_gate: paths, relative to ``mlp``, of the activation, the up projection and the down projection
            of a gated MLP whose down projection receives ``act(gate(x)) · up(x)`` (attribution patching's
            ``method="deeplift"`` splits that product), or None for an ungated MLP.
        text_config: attribute of the config holding the decoder's sizes ("" = the config itself).
        modality_tokens: modality -> config attribute names holding its placeholder token id,
            tried in order (first present wins). Placeholders are the positions whose decoder
            input embedding is replaced by encoder features.
        marker_tokens: config attribute names of begin/end markers (counted as ``template``).
        marker_strings: token strings of markers looked up in the tokenizer (counted as ``template``).
        extra_inputs: forward inputs besides ``input_ids`` and ``attention_mask`` that the family's
            processor produces and the forward consumes.
        derived_inputs: inputs mech rebuilds from ``input_ids`` when a caller omits them, as
            input name -> scheme: ``"modality_codes"`` (0 text, 1 image, 2 video, 3 audio: the
            ``mm_token_type_ids`` of transformers' processors, which M-RoPE needs) or
            ``"image_is_one"`` (1 at image tokens: Gemma3's ``token_type_ids``, which make
            attention inside an image bidirectional).
        padding_side: the side the family pads batches on for generation-style scoring.
        injection_layers: config attribute path (e.g. ``"vision_config.deepstack_visual_indexes"``)
            whose *length* k says that visual features are added to the residual stream at visual
            positions after decoder layers ``0 .. k-1`` (Qwen3-VL "deepstack"). At such a layer the
            residual at visual positions entering the next layer is that layer's *output plus the
            injected features*: read it as the next layer's ``resid_pre``.
        visual_path: ``"decoder_sequence"`` when encoder features replace placeholder embeddings in
            the decoder sequence; ``"cross_attention"`` when they enter through cross-attention
            layers (Mllama): token-group instruments then refuse the model.
        notes: free text shown in errors and docs.
    """

    model_type: str
    model_class: str
    language_model: str = "model.language_model"
    layers: str = "model.language_model.layers"
    embed: str = "model.language_model.embed_tokens"
    ln_final: str = "model.language_model.norm"
    unembed: str = "lm_head"
    attn: str = "self_attn"
    mlp: str = "mlp"
    ln1: str = "input_layernorm"
    ln2: str = "post_attention_layernorm"
    attn_post_norm: str | None = None
    mlp_post_norm: str | None = None
    o_proj: str = "o_proj"
    mlp_gate: tuple[str, str, str] | None = ("act_fn", "up_proj", "down_proj")
    text_config: str = "text_config"
    modality_tokens: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    marker_tokens: tuple[str, ...] = ()
    marker_strings: tuple[str, ...] = ()
    extra_inputs: tuple[str, ...] = ("pixel_values",)
    derived_inputs: Mapping[str, DerivedScheme] = field(default_factory=dict)
    padding_side: PaddingSide = "left"
    injection_layers: str | None = None
    visual_path: VisualPath = "decoder_sequence"
    notes: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality_tokens", frozen_mapping(self.modality_tokens))
        object.__setattr__(self, "derived_inputs", frozen_mapping(self.derived_inputs))
        bad_schemes = set(self.derived_inputs.values()) - set(DERIVED_SCHEMES)
        if bad_schemes:
            raise ConfigError(
                f"{self.model_type}: derived input schemes {sorted(bad_schemes)}; allowed: {DERIVED_SCHEMES}"
            )
        bad = set(self.modality_tokens) - set(MODALITIES)
        if bad:
            raise ConfigError(f"{self.model_type}: unknown modalities {sorted(bad)}; allowed: {MODALITIES}")
        if self.padding_side not in ("left", "right"):
            raise ConfigError(
                f"{self.model_type}: padding_side={self.padding_side!r}; allowed: 'left', 'right'"
            )
        if self.visual_path not in ("decoder_sequence", "cross_attention"):
            raise ConfigError(
                f"{self.model_type}: visual_path={self.visual_path!r}; allowed: 'decoder_sequence', 'cross_attention'"
            )
