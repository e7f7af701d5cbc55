"""A model's fingerprint: a short hash of what it is (its config and weights), not of where it lies."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["model_fingerprint"]

#: config keys that say where and with which release a model was saved, not what it is
_PLACE_KEYS = frozenset({"_name_or_path", "transformers_version"})


def _config_identity(value: Any) -> Any:
    """The config as plain data without :data:`_PLACE_KEYS`, at every depth (sub-configs too)."""
    if isinstance(value, dict):
        return {k: _config_identity(v) for k, v in value.items() if k not in _PLACE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_config_identity(v) for v in value]
    return value


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the config and of the first and last parameter tensors (detects retrained weights).

    The config's ``_name_or_path`` (the folder it was loaded from) and ``transformers_version`` are
    left out, so the same weights give the same fingerprint wherever the checkout lies.
    """
    config = _config_identity(model.config.to_dict())
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    params = list(model.parameters())
    for p in (params[0], params[-1]) if params else ():
        h.update(p.detach().float().flatten()[:65536].cpu().numpy().tobytes())
    return h.hexdigest()[:16]
