"""Loading a processor from a directory or a hub id, part by part when an optional package is missing.

``transformers.AutoProcessor.from_pretrained`` is all-or-nothing: a video-capable processor
(Qwen2-VL, InternVL, SmolVLM, ...) refuses to load when torchvision, which only its video processor
needs, is not installed. :func:`load_processor` first asks ``AutoProcessor``; when that fails it
resolves the real processor class (``processor_class`` of ``processor_config.json``, else the auto
mapping of the model's config), loads each sub-processor with transformers' own loader, and puts a
:class:`MissingPart` in the slot of every sub-processor whose optional package is missing. The
processor is then built by the class's own ``from_args_and_dict``. Images, audio and text go through
the real sub-processors exactly as with the full processor; using a missing part (a video input)
raises :class:`~mech.errors.MissingDependencyError` naming the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from typing import Any

import transformers

from mech.errors import MissingDependencyError, ProcessorError

__all__ = [
    "PROCESSOR_FILES",
    "MissingPart",
    "has_processor_files",
    "install_hint",
    "load_processor",
    "missing_packages",
]

# files save_pretrained writes for a processor (any one of them means "processor files are there")
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "chat_template.jinja",
    "chat_template.json",
)
# transformers backend name -> pip distribution, where they differ
_PIP_NAMES = {
    "vision": "Pillow",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "bs4": "beautifulsoup4",
    "speech": "torchaudio",
    "audio": "librosa",
    "jinja": "jinja2",
    "levenshtein": "Levenshtein",
}
# base classes of the sub-processor kinds, importable without their optional backends
_BASES = {
    "video_processor": ("transformers.video_processing_utils", "VideoProcessorMixin"),
    "image_processor": ("transformers.image_processing_base", "ImageProcessingMixin"),
    "feature_extractor": ("transformers.feature_extraction_utils", "FeatureExtractionMixin"),
    "audio_processor": ("transformers.feature_extraction_utils", "FeatureExtractionMixin"),
}
_USE = {
    "video_processor": "video inputs",
    "image_processor": "image inputs",
    "feature_extractor": "audio inputs",
    "audio_processor": "audio inputs",
}


def missing_packages(exc: BaseException) -> list[str]:
    """Packages named by ``exc`` (or the exceptions it was raised from) that are not installed.

    A name counts only when it is verifiably absent (transformers' backend check, else
    ``importlib.util.find_spec``), so an unrelated error yields ``[]``. Never raises.
    """
    from transformers.utils.import_utils import BACKENDS_MAPPING

    def absent(name: str) -> bool:
        if name in BACKENDS_MAPPING:
            return not BACKENDS_MAPPING[name][0]()
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            return True

    found: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        names = [n for n in BACKENDS_MAPPING if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text, re.I)]
        names += re.findall(r"pip install ([A-Za-z_][\w.-]*)", text)
        names += re.findall(r"[Pp]ackage `([A-Za-z_][\w.-]*)`", text)
        names += re.findall(r"`([A-Za-z_][\w.-]*)` (?:to be installed|is required|is not installed)", text)
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            names.append(exc.name.split(".")[0])
        for name in names:
            name = name.lower() if name.lower() in BACKENDS_MAPPING else name
            if name not in found and name.isidentifier() and absent(name):
                found.append(name)
        exc = exc.__cause__ or exc.__context__
    return found


def install_hint(packages: list[str]) -> str:
    """``pip install ...`` for ``packages`` (transformers backend names mapped to pip names), with the
    torch version for the packages whose build must match torch."""
    pip = [_PIP_NAMES.get(p, p) for p in packages]
    hint = f"pip install {' '.join(pip)}"
    if any(p in ("torchvision", "torchaudio") for p in pip):
        import torch

        hint += (
            f" (the build matching your torch {torch.__version__}; see "
            "https://pytorch.org/get-started/locally/)"
        )
    return hint


class MissingPart:
    """Stands in for a sub-processor (e.g. the video processor) whose optional package is not installed.

    It carries the part's saved configuration as attributes, over ``defaults`` (the options of its kind,
    None unless saved, as a real part has them: e.g. SmolVLM's chat template reads the video
    processor's ``num_frames`` for every prompt), and returns it from ``to_dict`` so that the processor
    saves as it was loaded. Calling it, or reading an attribute it lacks, raises
    :class:`~mech.errors.MissingDependencyError` naming the package and the fix.
    """

    _auto_class = None

    def __init__(
        self,
        attribute: str,
        owner: str,
        packages: list[str],
        config: dict[str, Any] | None = None,
        defaults: dict[str, Any] | None = None,
    ):
        config = dict(config or {})
        for source in (defaults or {}, config):
            self.__dict__.update(
                {k: v for k, v in source.items() if isinstance(k, str) and not k.startswith("_")}
            )
        self.__dict__["_mech_missing"] = (attribute, owner, tuple(packages), config)

    def _refuse(self, *args: Any, **kwargs: Any):
        attribute, owner, packages, config = self.__dict__["_mech_missing"]
        kind = config.get(f"{attribute.split('_', 1)[0]}_processor_type") or attribute
        raise MissingDependencyError(
            f"the {attribute} ({kind}) of this {owner} needs {', '.join(packages)}, which is not installed, so "
            f"{_USE.get(attribute, 'this input')} cannot be processed; the other parts of the processor were "
            f"loaded and work. Fix: {install_hint(list(packages))}, then load the model again."
        )

    __call__ = preprocess = fetch_videos = fetch_images = sample_frames = _refuse

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        self._refuse()

    def to_dict(self) -> dict[str, Any]:
        """The part's saved configuration, unchanged."""
        return dict(self.__dict__["_mech_missing"][3])

    def __repr__(self) -> str:
        attribute, owner, packages, _ = self.__dict__["_mech_missing"]
        return f"MissingPart({attribute} of {owner}: needs {', '.join(packages)})"


def _missing_part(
    attribute: str, owner: str, packages: list[str], config: dict[str, Any] | None
) -> MissingPart:
    """A :class:`MissingPart` that is also an instance of the part's transformers base class."""
    modality = next((m for m in _BASES if m in attribute), None)
    base = None
    if modality is not None:
        try:
            base = getattr(importlib.import_module(_BASES[modality][0]), _BASES[modality][1])
        except (ImportError, AttributeError):
            base = None
    cls = MissingPart if base is None else type(f"Missing{base.__name__}", (MissingPart, base), {})
    options = getattr(getattr(base, "valid_kwargs", None), "__annotations__", {})
    return cls(attribute, owner, packages, config, defaults=dict.fromkeys(options))


def has_processor_files(where: str) -> bool:
    """Whether the local directory ``where`` holds any file ``save_pretrained`` writes for a processor
    (False for a hub id: nothing local to look at)."""
    return os.path.isdir(where) and any(os.path.exists(os.path.join(where, f)) for f in PROCESSOR_FILES)


def _processor_class(where: str, config: Any, processor_dict: dict[str, Any]):
    """The real processor class: ``processor_class`` of the saved processor config, else the auto
    mapping of ``config``'s type; None when neither names one."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name

    cls = None
    if processor_dict.get("processor_class"):
        cls = processor_class_from_name(processor_dict["processor_class"])
    if cls is None and config is not None and type(config) in PROCESSOR_MAPPING:
        cls = PROCESSOR_MAPPING[type(config)]
    if cls is None or not isinstance(cls, type) or not issubclass(cls, transformers.ProcessorMixin):
        return None
    return cls


def _load_part(cls, attribute: str, where: str, processor_dict: dict[str, Any]):
    """One sub-processor, through the class's own ``_get_arguments_from_pretrained`` restricted to it."""
    view = type(
        cls.__name__,
        (cls,),
        {"get_attributes": classmethod(lambda c: [attribute]), "__module__": cls.__module__},
    )
    return view._get_arguments_from_pretrained(where, processor_dict)[0]


def _part_config(attribute: str, where: str, processor_dict: dict[str, Any]) -> dict[str, Any]:
    """The saved configuration of a sub-processor: its entry in ``processor_config.json``, else its own
    file (e.g. ``video_preprocessor_config.json``) read by its base class; ``{}`` when neither."""
    if isinstance(processor_dict.get(attribute), dict):
        return dict(processor_dict[attribute])
    modality = next((m for m in _BASES if m in attribute), None)
    if modality is None:
        return {}
    try:
        base = getattr(importlib.import_module(_BASES[modality][0]), _BASES[modality][1])
        return dict(getattr(base, f"get_{modality}_dict")(where)[0])
    except Exception:  # noqa: BLE001 -- a best-effort read of a config for a part that will not run anyway
        return {}


def _construct(cls, args: list[Any], processor_dict: dict[str, Any], kwargs: dict[str, Any]):
    """``cls.from_args_and_dict`` with :class:`MissingPart` accepted in its sub-processor slots.

    transformers checks each slot against a base class exported only when the part's backend is
    installed; a one-off subclass accepts the stand-in there, and the object is then given back
    its real class, so ``type(processor) is cls``.
    """

    def check(self, name, argument):
        if isinstance(argument, MissingPart):
            return type(argument)
        return cls.check_argument_for_proper_class(self, name, argument)

    shim = type(
        cls.__name__, (cls,), {"check_argument_for_proper_class": check, "__module__": cls.__module__}
    )
    processor = shim.from_args_and_dict(args, processor_dict, **kwargs)
    processor.__class__ = cls
    return processor


def load_processor(
    where: str, *, config: Any = None, trust_remote_code: bool = False, spec: str | None = None
) -> tuple[Any, dict[str, tuple[str, ...]]]:
    """Load the processor saved in ``where`` (a local directory or a hub id).

    Args:
        where: what ``from_pretrained`` reads.
        config: the model's config (finds the processor class when no processor config names it).
        trust_remote_code: passed to ``AutoProcessor``.
        spec: the user's spelling of ``where``, for messages.

    Returns:
        ``(processor, missing)``: the real transformers processor, and sub-processor attribute ->
        packages it needs but that are not installed (``{}`` when everything loaded). Those slots hold
        a :class:`MissingPart` that raises :class:`~mech.errors.MissingDependencyError` when used.

    Raises:
        ProcessorError: a directory without processor files, or processor files that cannot be read.
        MissingDependencyError: the tokenizer, or the processor itself, needs a package that is not
            installed (the message names it and the ``pip install``).
    """
    spec = spec or where
    try:
        return transformers.AutoProcessor.from_pretrained(where, trust_remote_code=trust_remote_code), {}
    except (OSError, ValueError, TypeError, ImportError, KeyError, AttributeError) as exc:
        first = exc
    if os.path.isdir(where) and not has_processor_files(where):
        raise ProcessorError(
            f"no processor files in {spec!r} (looked for {', '.join(PROCESSOR_FILES)}). Save the processor beside "
            "the weights (processor.save_pretrained(dir)), or load mech.load((model, None)) and pass tokenized "
            "inputs."
        ) from first
    try:
        processor_dict, kwargs = transformers.ProcessorMixin.get_processor_dict(where)
    except (OSError, ValueError) as exc:
        raise _failure(spec, first) from exc
    cls = _processor_class(where, config, processor_dict)
    if cls is None:
        raise _failure(spec, first) from first
    args, missing = [], {}
    for attribute in cls.get_attributes():
        try:
            args.append(_load_part(cls, attribute, where, processor_dict))
        except (OSError, ValueError, TypeError, ImportError, KeyError, AttributeError) as exc:
            packages = missing_packages(exc)
            if not packages or "tokenizer" in attribute:
                raise _failure(spec, exc, part=attribute, owner=cls.__name__) from exc
            missing[attribute] = tuple(packages)
            args.append(
                _missing_part(
                    attribute, cls.__name__, packages, _part_config(attribute, where, processor_dict)
                )
            )
    if not missing:  # every part loads on its own: the processor itself is what failed
        raise _failure(spec, first, owner=cls.__name__) from first
    try:
        processor = _construct(cls, args, processor_dict, kwargs)
    except (OSError, ValueError, TypeError, ImportError, KeyError, AttributeError) as exc:
        raise _failure(spec, exc, owner=cls.__name__) from exc
    return processor, missing


def _failure(
    spec: str, exc: BaseException, *, part: str | None = None, owner: str | None = None
) -> Exception:
    """The error for processor files that are there but do not load: the missing package when one is
    to blame (MissingDependencyError), else the reason (ProcessorError)."""
    what = f"the {part} of {owner}" if part and owner else (owner or "the processor")
    packages = missing_packages(exc)
    if packages:
        return MissingDependencyError(
            f"{what} saved in {spec!r} needs {', '.join(packages)}, which is not installed. Fix: "
            f"{install_hint(packages)}; or load mech.load((model, None)) and pass tokenized inputs."
        )
    return ProcessorError(
        f"the processor files in {spec!r} could not be loaded into {what} ({type(exc).__name__}: {exc}). Check "
        "that they were written by processor.save_pretrained for this model, or load mech.load((model, None)) "
        "and pass tokenized inputs."
    )
