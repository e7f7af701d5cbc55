"""``mech.load``: a Hugging Face MLLM and its processor, untouched, with the family table resolved."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from mech.errors import ConfigError, ModelFileError, SpecError, UnsupportedArchitectureError
from mech.models.processor import load_processor
from mech.models.table import Architecture, resolve
from mech.prepare.groups import TokenGroups

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "DTYPES",
    "MechModel",
    "as_model",
    "load",
    "loading_bars",
    "resolve_dir",
    "takes_model",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class MechModel:
    """A loaded MLLM: the untouched Hugging Face ``model`` and ``processor`` plus its resolved
    architecture table ``arch``. Instruments take this object and inputs."""

    model: torch.nn.Module
    processor: Any
    arch: Architecture
    spec: str = "(model, processor)"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device | None:
        """Device of the input embedding (where inputs go; with ``device_map`` sharding too)."""
        try:
            return self.model.get_input_embeddings().weight.device
        except AttributeError:
            return next(self.model.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def prepare(self, images: Any, prompts: Any, **kwargs: Any):
        """See :func:`mech.prepare.inputs.prepare`."""
        from mech.prepare.inputs import prepare

        return prepare(self, images, prompts, **kwargs)

    def inputs(self, inputs: Any):
        """Normalise ``prepare`` or raw processor outputs; see :func:`mech.prepare.inputs.as_inputs`."""
        from mech.prepare.inputs import as_inputs

        return as_inputs(self, inputs)

    def groups(self, inputs: Any) -> TokenGroups:
        return self.inputs(inputs).groups

    @torch.no_grad()
    def logits(self, inputs: Any) -> torch.Tensor:
        """Plain forward: logits ``[batch, pos, vocab]`` of ``model(**inputs)``."""
        return self.model(**self.inputs(inputs)).logits

    def require_decoder_sequence(self, instrument: str) -> None:
        """Raise for families whose visual features do not sit in the decoder sequence (Mllama)."""
        if self.arch.table.visual_path != "decoder_sequence":
            raise UnsupportedArchitectureError(
                f"{instrument} needs image tokens in the decoder sequence, but {self.arch.model_type} feeds "
                f"images through cross-attention ({self.arch.table.notes}). Use mech eval (input conditions) "
                "for this model, or a family whose images are decoder tokens."
            )


@contextlib.contextmanager
def loading_bars(enabled: bool):
    """Show (``enabled``) or hide transformers' progress bars ("Loading weights", ...) and the hub
    client's retry warnings inside the block; the previous settings are restored on exit,
    exceptions included."""
    import logging

    from transformers.utils import logging as hf_logging

    hub = logging.getLogger("huggingface_hub")  # its retry warnings ("... thrown while requesting HEAD ...")
    before, level = hf_logging.is_progress_bar_enabled(), hub.level
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    if not enabled:
        hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
        hub.setLevel(level)


def _dtype(dtype: Any) -> Any:
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}; allowed: {', '.join(DTYPES)}, 'auto' or a torch.dtype")
    return DTYPES[dtype]


def resolve_dir(spec: str) -> str:
    if spec.startswith("organism:"):
        from mech.organisms import organism_dir

        return str(organism_dir(spec.split(":", 1)[1]))
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SpecError(
                f"{spec!r} is a file; pass the directory holding config.json (or a Hugging Face id)."
            )
        return str(path)
    if spec.startswith(("/", ".", "~")) or os.sep + os.sep in spec or spec.count("/") > 1:
        raise SpecError(
            f"model directory {spec!r} does not exist; pass an existing directory, a Hugging Face id "
            "('org/name'), or 'organism:<name>'."
        )
    return spec


def load(
    spec: Any,
    *,
    device: str | torch.device | None = None,
    device_map: Any = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> MechModel:
    """Load an MLLM for measurement.

    Args:
        spec: a Hugging Face id, a local directory, ``"organism:<name>"`` (shipped model organisms),
            or a ``(model, processor)`` pair (``processor`` may be None for tokenized inputs).
        device: move the model there (ignored with ``device_map``).
        device_map: passed to ``from_pretrained`` (``"auto"`` shards over GPUs with accelerate).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a ``torch.dtype``.
        attn_implementation: ``"sdpa"`` (transformers' default), ``"eager"``, ``"flash_attention_2"``, ...
        trust_remote_code: off unless you ask; mech's families all live in transformers.

    Returns:
        :class:`MechModel` with the untouched ``model`` and ``processor``.

    Raises:
        SpecError: missing directory, unknown organism, an id the hub (or, offline, its cache) does not have.
        ModelFileError: a folder without config.json or weights, a corrupt config or a truncated or
            corrupt weights file (a ``SpecError``).
        UnsupportedArchitectureError: no family table, or a model type this transformers does not
            know (the message lists the supported families).
        ProcessorError: a directory without processor files, or processor files that cannot be read.
        MissingDependencyError: the tokenizer or the processor itself needs a package that is not
            installed (the message names it). A sub-processor that needs one (torchvision for a video
            processor) does not raise here: the rest loads, the part raises this error when used (a
            video input), and ``meta["processor_missing"]`` maps its attribute to the packages.
        ConfigError: unknown dtype or attention implementation.
        DeviceError: a ``device`` this machine does not have (:func:`mech.devices.check_device`).
    """
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"attn_implementation={attn_implementation!r}; allowed: {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    torch_dtype = _dtype(dtype)
    if device is not None and device_map is None:  # before anything is read: no CUDA, no such GPU, ...
        from mech.devices import check_device

        check_device(str(device))
    if isinstance(spec, tuple):
        if len(spec) != 2 or not hasattr(spec[0], "config"):
            raise SpecError(
                "a tuple spec must be (model, processor) with a transformers model first; "
                "processor may be None."
            )
        model, processor = spec
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        if torch_dtype not in (None, "auto"):
            model.to(torch_dtype)
        if device is not None:
            model.to(device)
        tok = getattr(processor, "tokenizer", processor)
        return MechModel(model, processor, resolve(model.config, tok))
    if not isinstance(spec, (str, os.PathLike)):
        raise SpecError(
            f"cannot load a model from {type(spec).__name__}; pass a Hugging Face id, a directory, "
            "'organism:<name>' or a (model, processor) pair."
        )
    spec = str(spec)
    where = resolve_dir(spec)
    config = _config(where, spec, trust_remote_code)
    from mech.models.table import table_for

    table = table_for(config)
    cls = getattr(transformers, table.model_class)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    # the processor first: a missing processor file or package fails before the weights are read
    processor, missing = load_processor(where, config=config, trust_remote_code=trust_remote_code, spec=spec)
    model = _weights(cls, where, spec, kwargs).eval()
    if device is not None and device_map is None:
        model.to(device)
    tok = getattr(processor, "tokenizer", processor)
    meta = {"processor_missing": missing} if missing else {}
    return MechModel(model, processor, resolve(config, tok), spec=spec, meta=meta)


def as_model(m: Any, verb: str = "this verb") -> MechModel:
    """The :class:`MechModel` a verb works on: the one verbs get their model through (:func:`takes_model`).

    Args:
        m: a :class:`MechModel` (returned as it is), or anything :func:`load` accepts (an id, a folder,
            ``"organism:<name>"``, a ``(model, processor)`` pair), which is loaded.
        verb: the verb's name, for the message.

    Raises:
        SpecError: a raw ``torch.nn.Module`` (a Hugging Face model such as ``LlavaForConditionalGeneration``):
            it is refused with the fix ``m = mech.load((model, processor))``, not wrapped with
            ``processor=None``, because without the tokenizer the token groups are read from the
            model's special ids only and the chat template would count as text; anything else that
            is neither a :class:`MechModel` nor a spec.
    """
    if isinstance(m, MechModel):
        return m
    if isinstance(m, torch.nn.Module):
        raise SpecError(
            f"{verb} takes a mech.MechModel, not a raw {type(m).__name__}: wrap it once with "
            "m = mech.load((model, processor)) and pass m (processor=None only for inputs that are already "
            "tokenized: the token groups then cannot tell the chat template from the text)."
        )
    if isinstance(m, (str, os.PathLike, tuple)):
        return load(m)
    raise SpecError(
        f"{verb} takes a mech.MechModel; got a {type(m).__name__}. Make one with m = mech.load(spec) "
        "(a Hugging Face id, a folder, 'organism:<name>' or a (model, processor) pair)."
    )


def takes_model(verb: Callable) -> Callable:
    """Decorator for a verb whose first argument is the model ``m``: ``m`` goes through :func:`as_model`
    (a spec is loaded, a raw Hugging Face model refused with the fix), once, before the verb runs.

    Raises:
        SpecError: from :func:`as_model`.
    """

    @functools.wraps(verb)
    def call(m: Any, *args: Any, **kwargs: Any) -> Any:
        return verb(as_model(m, verb.__name__), *args, **kwargs)

    return call


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_error(spec: str, exc: BaseException) -> SpecError:
    why = (
        "the Hugging Face hub is off here (HF_HUB_OFFLINE=1) and the local cache does not hold it"
        if _offline()
        else f"the Hugging Face hub did not give it ({_one_line(exc)})"
    )
    return SpecError(
        f"--model {spec!r} is not a local folder, and {why}. Check the id, or download the model where "
        f"there is network (huggingface-cli download {spec} --local-dir DIR) and pass that folder."
    )


def _unknown_type(spec: str, where: str, exc: BaseException) -> UnsupportedArchitectureError:
    import json

    from mech.models.table import supported

    try:
        model_type = json.loads((Path(where) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    named = f"model_type {model_type!r}" if model_type else "no model_type"
    return UnsupportedArchitectureError(
        f"--model {spec!r}: its config.json has {named}, which transformers {transformers.__version__} does not know. "
        f"mech supports {', '.join(supported())}; pass a model of one of those families "
        "(or upgrade transformers if the model is newer than it)."
    )


def _config(where: str, spec: str, trust_remote_code: bool) -> Any:
    """``AutoConfig.from_pretrained(where)``, its failures as errors naming the fix."""
    local = Path(where).is_dir()
    if local and not (Path(where) / "config.json").is_file():
        raise ModelFileError(
            f"--model {spec!r}: the folder {where} has no config.json; pass the folder that "
            "save_pretrained wrote (config.json, the weights and the processor files), or download "
            "the model again."
        )
    try:
        return transformers.AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc)
        if (
            isinstance(exc, KeyError)
            or "model type" in text
            or "model_type" in text
            or "Unrecognized model" in text
        ):
            if local:
                raise _unknown_type(spec, where, exc) from exc
        if not local:
            raise _hub_error(spec, exc) from exc
        raise ModelFileError(
            f"--model {spec!r}: {where}/config.json cannot be read ({_one_line(exc)}); download "
            "the model again, or re-save it with save_pretrained."
        ) from exc


def _weights(cls: Any, where: str, spec: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """``cls.from_pretrained(where, **kwargs)``, a missing, truncated or corrupt weights file as an
    error naming the fix."""
    from safetensors import SafetensorError

    local = Path(where).is_dir()
    try:
        return cls.from_pretrained(where, **kwargs)
    except SafetensorError as exc:
        raise ModelFileError(
            f"--model {spec!r}: the weights in {where} cannot be read ({_one_line(exc)}): the "
            "file is truncated or not a safetensors file. Download the model again, or re-save it "
            "with save_pretrained."
        ) from exc
    except OSError as exc:
        if not local:
            raise _hub_error(spec, exc) from exc
        raise ModelFileError(
            f"--model {spec!r}: no readable weights in {where} ({_one_line(exc)}); put the weights "
            "(model.safetensors, or its shards and model.safetensors.index.json) beside config.json, "
            "or re-save the model with save_pretrained."
        ) from exc
    except RuntimeError as exc:
        if "size mismatch" not in str(exc) and "state_dict" not in str(exc):
            raise
        raise ModelFileError(
            f"--model {spec!r}: the weights in {where} do not fit its config.json "
            f"({_one_line(exc)[:200]}); the files come from different models. Download the model "
            "again."
        ) from exc
