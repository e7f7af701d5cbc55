"""Looking up and resolving a family's table (:mod:`mech.models.schema`, :mod:`mech.models.families`).

:func:`table_for` finds the entry of a config's family in the read-only
:data:`mech.models.families.TABLES`; :func:`resolve` turns it into an :class:`Architecture`: the
table with its token ids and sizes read from the loaded config and tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mech.errors import ConfigError, UnsupportedArchitectureError
from mech.models.families import TABLES
from mech.models.schema import ArchitectureTable, frozen_mapping

__all__ = ["Architecture", "get_path", "resolve", "supported", "table_for"]


def supported() -> tuple[str, ...]:
    """The ``model_type`` names mech has a table for, sorted."""
    return tuple(sorted(TABLES))


def table_for(config: Any) -> ArchitectureTable:
    """The table of a config's family.

    Raises:
        UnsupportedArchitectureError: no table for ``config.model_type``; the message lists the
            supported families and how to add one.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in TABLES:
        raise UnsupportedArchitectureError(
            f"mech has no architecture table for model_type={model_type!r}. Supported: "
            f"{', '.join(supported())}. To add one, add an ArchitectureTable to TABLES in "
            "mech/models/families.py (module paths and the config attributes of its modality token ids)."
        )
    return TABLES[model_type]


def get_path(root: Any, path: str) -> Any:
    """Follow a dotted attribute path (``"model.language_model.layers"``; integers index lists)."""
    obj = root
    for part in path.split("."):
        if not part:
            continue
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Architecture:
    """A table resolved against one loaded model: ids and sizes read from its config.

    Attributes:
        table: the family's :class:`ArchitectureTable`.
        n_layers, n_heads, n_kv_heads, d_model, d_head, vocab_size: decoder sizes from the config.
        modality_ids: modality -> placeholder token id present in this model (absent modalities
            are left out).
        marker_ids: ids of begin/end markers (``template`` group).
        injection_layers: decoder layers after which visual features are added (empty if none).
    """

    table: ArchitectureTable
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    vocab_size: int
    modality_ids: Mapping[str, int]
    marker_ids: tuple[int, ...]
    injection_layers: tuple[int, ...]

    @property
    def model_type(self) -> str:
        return self.table.model_type

    def module(self, model: torch.nn.Module, part: str, layer: int | None = None) -> torch.nn.Module:
        """The module named by the table: ``part`` in {"layers", "embed", "ln_final", "unembed",
        "language_model"} or, with ``layer``, a per-layer part {"layer", "attn", "mlp", "ln1", "ln2",
        "attn_post_norm", "mlp_post_norm", "o_proj"} (the post norms are None where the family
        has none).

        Raises:
            ConfigError: unknown part (the message lists the allowed ones) or layer out of range.
        """
        top = ("layers", "embed", "ln_final", "unembed", "language_model")
        per_layer = ("layer", "attn", "mlp", "ln1", "ln2", "attn_post_norm", "mlp_post_norm", "o_proj")
        if layer is None:
            if part not in top:
                raise ConfigError(f"part={part!r}; allowed without a layer: {top}; with a layer: {per_layer}")
            return get_path(model, getattr(self.table, part))
        if part not in per_layer:
            raise ConfigError(f"part={part!r}; allowed with a layer: {per_layer}")
        if not 0 <= layer < self.n_layers:
            raise ConfigError(f"layer={layer} is out of range; this model has layers 0..{self.n_layers - 1}")
        block = get_path(model, self.table.layers)[layer]
        if part == "layer":
            return block
        if part == "o_proj":
            return get_path(block, f"{self.table.attn}.{self.table.o_proj}")
        path = getattr(self.table, part)
        return None if path is None else get_path(block, path)


def resolve(config: Any, tokenizer: Any | None = None) -> Architecture:
    """Resolve the family table of ``config`` into an :class:`Architecture`.

    Args:
        config: the model's ``PretrainedConfig``.
        tokenizer: optional, to look up ``marker_strings``.

    Raises:
        UnsupportedArchitectureError: unknown family, or a cross-attention family (the message says
            what mech can and cannot do for it).
    """
    table = table_for(config)
    text = get_path(config, table.text_config) if table.text_config else config
    n_heads = int(text.num_attention_heads)
    d_model = int(text.hidden_size)
    ids: dict[str, int] = {}
    for modality, names in table.modality_tokens.items():
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                ids[modality] = int(value)
                break
    markers = [int(getattr(config, n)) for n in table.marker_tokens if getattr(config, n, None) is not None]
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        markers += [int(vocab[s]) for s in table.marker_strings if s in vocab]
    injection: tuple[int, ...] = ()
    if table.injection_layers:
        try:
            injection = tuple(range(len(get_path(config, table.injection_layers) or ())))
        except AttributeError:
            injection = ()
    return Architecture(
        table=table,
        n_layers=int(text.num_hidden_layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(text, "num_key_value_heads", None) or n_heads),
        d_model=d_model,
        d_head=int(getattr(text, "head_dim", None) or d_model // n_heads),
        vocab_size=int(text.vocab_size),
        modality_ids=frozen_mapping(ids),
        marker_ids=tuple(dict.fromkeys(markers)),
        injection_layers=injection,
    )
