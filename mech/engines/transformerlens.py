"""TransformerLens 4.x interoperability: a ``TransformerBridge`` over the same model, never pip-installing.

TL 4.3's bridge supports LLaVA (``LlavaArchitectureAdapter``; also LLaVA-NeXT, LLaVA-OneVision,
Gemma3 multimodal, GLM-4V, Mistral3). When it boots a multimodal model it loads a processor and,
if that fails, calls ``transformer_lens.model_bridge.sources.transformers.helpers._ensure_torchvision``,
which runs ``uv pip install torchvision`` / ``python -m pip install torchvision`` (TL 4.3,
``helpers.py``). :func:`boot_bridge` replaces that function with one that refuses, and hands TL
mech's own processor instead of letting it load one, both only for the duration of the boot.

TL's patching functions call ``model.run_with_hooks(tokens, fwd_hooks=...)`` with tokens only;
:class:`WithInputs` binds the other forward inputs (``pixel_values``, ``attention_mask``) so that
``transformer_lens.patching.get_act_patch_resid_pre`` runs on a multimodal model unchanged.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from mech.errors import ConfigError

__all__ = ["WithInputs", "boot_bridge", "no_runtime_install"]


@contextlib.contextmanager
def no_runtime_install():
    """Inside: TL's on-the-fly ``pip install torchvision`` is replaced by a refusal (restored on exit)."""
    try:
        import transformer_lens.model_bridge.sources.transformers.helpers as helpers
    except ImportError:  # an older TL without the bridge: nothing to neutralise
        yield
        return
    original = helpers._ensure_torchvision
    helpers._ensure_torchvision = lambda: False
    try:
        yield
    finally:
        helpers._ensure_torchvision = original


def boot_bridge(m, directory: str | Path | None = None):
    """A ``TransformerBridge`` over ``m.model`` (same weights, same logits).

    Args:
        m: a :class:`~mech.MechModel` of a family TL's bridge supports (e.g. llava).
        directory: where the model's config and tokenizer live (default: ``m.spec`` if it is a directory,
            else a temporary copy written with ``save_pretrained``).

    Raises:
        ConfigError: transformer_lens is not installed (``pip install mech[tl]``).
    """
    try:
        import transformer_lens.model_bridge.sources.transformers.source as source
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as exc:
        raise ConfigError(
            "TransformerLens >= 4 is needed for the bridge; install the tl extra (pip install 'mech[tl]')"
        ) from exc
    if directory is None:
        spec_dir = Path(str(m.meta.get("dir", m.spec)))
        if spec_dir.is_dir():
            directory = spec_dir
        else:
            directory = tempfile.mkdtemp(prefix="mech-tl-")
            m.model.config.save_pretrained(directory)
            if m.processor is not None:
                m.processor.save_pretrained(directory)
    loader = source.load_modality_processor

    def give_processor(bridge, *args: Any, **kwargs: Any) -> None:
        bridge.processor = m.processor

    config = m.model.config
    archs = getattr(config, "architectures", None)
    source.load_modality_processor = give_processor
    try:
        if not archs:  # TL picks its adapter from config.architectures (unset on models built from a config)
            config.architectures = [type(m.model).__name__]
        with no_runtime_install():
            return TransformerBridge.boot_transformers(str(directory), hf_model=m.model, device=str(m.device))
    finally:
        source.load_modality_processor = loader
        config.architectures = archs


class WithInputs:
    """A bridge whose ``run_with_hooks``/``run_with_cache``/``__call__`` also pass ``extra`` inputs."""

    def __init__(self, bridge, **extra: Any) -> None:
        self._bridge, self._extra = bridge, extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bridge, name)

    def run_with_hooks(self, tokens, *args, **kwargs):
        return self._bridge.run_with_hooks(tokens, *args, **{**self._extra, **kwargs})

    def run_with_cache(self, tokens, *args, **kwargs):
        return self._bridge.run_with_cache(tokens, *args, **{**self._extra, **kwargs})

    def __call__(self, tokens, *args, **kwargs):
        return self._bridge(tokens, *args, **{**self._extra, **kwargs})
