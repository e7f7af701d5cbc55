"""Settings as data: one frozen dataclass per command, every default in one place.

A command's settings are a frozen :class:`Settings` subclass. Fields typed ``Literal[...]`` (or a
tuple of such) are checked on construction: a value outside the allowed ones raises
:class:`~mech.errors.ConfigError` listing them. The command line is derived from these classes
(:mod:`mech.runs.args`); the report composes them; no library code reads an argparse Namespace.

A run's *identity* is :meth:`Settings.identity` (every field that changes the numbers: model, data,
n, batch size, seed, dtype and the command's own options; not where the output goes or which
device or shard computes it) plus the hash of the data's sample ids. It is stored in every parts
store and result (:mod:`mech.runs.loop`), and an output folder holds one identity per command.

This module imports neither torch nor transformers, so ``mech --help`` stays fast; the allowed
values of the ``Literal`` types equal the constants of the modules that use them (a test checks).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from mech import words as W
from mech.deprecation import renamed_attributes, renamed_fields, translate
from mech.errors import ConfigError

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
Condition = Literal[W.names(W.CONDITIONS)]  # type: ignore[valid-type]
Query = Literal["last", "answer", "text"]
Method = Literal["score", "direct", "cot"]
Scoring = Literal["letter", "option_text"]
Parser = Literal["official", "strict"]
Direction = Literal[W.names(W.DIRECTIONS)]  # type: ignore[valid-type]
PatchMetric = Literal[W.names(W.METRICS)]  # type: ignore[valid-type]
Site = Literal[W.names(W.SITES)]  # type: ignore[valid-type]
Position = Literal[W.names(W.POSITION_GROUPS)]  # type: ignore[valid-type]
Estimator = Literal[W.names(W.ESTIMATORS)]  # type: ignore[valid-type]
Removal = Literal[W.names(W.REMOVALS)]  # type: ignore[valid-type]
RepairEdit = Literal["zero", "mean", "steer", "reweight"]
Granularity = Literal["neurons", "heads", "layers"]
RepairSource = Literal["attribution", "decomposition", "list"]
RepairPositions = Literal["answer", "all"]
Prior = Literal["auto", "planted", "white_image"]

#: ``Ablation`` is the deprecated name of :data:`Removal` (reading it warns)
_renamed = renamed_attributes(__name__, Ablation="Removal")


def __getattr__(name: str) -> Any:
    """The instruments' settings classes by name (``EvalSettings``, ``PatchSettings``, ...): each is
    defined in its instrument's ``instrument`` module (:func:`mech.runs.instruments.discover`) and
    readable here too (every registration: :data:`mech.runs.jobs.INSTRUMENTS`)."""
    if name.startswith("__"):  # the import system's questions (``__path__``): not a settings class
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from mech.runs.instruments import discover

    for inst in discover():
        if inst.settings.__name__ == name:
            return inst.settings
    return _renamed(name)


#: fields that say where and how a run is computed, not what it computes (outside the identity)
EXECUTION = ("out", "device", "device_map", "shard", "overwrite", "progress", "verbose")
DEFAULT_CONDITIONS = ("complete", "white_image", "image_only", "no_image", "black_image", "noise_image")
DEFAULT_COMPARE = ("organism:image-biased", "organism:balanced", "organism:text-biased")


def option_help(text: str, **extra: Any) -> dict[str, Any]:
    """A settings field's ``metadata``: its command-line help and any extra argparse keywords."""
    return {"help": text, **extra}


_help = option_help


def allowed(tp: Any) -> tuple | None:
    """The allowed values of a ``Literal`` type, of ``tuple[Literal, ...]``, or of ``X | None``
    around either; None when ``tp`` is not such a type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return typing.get_args(tp)
    if origin in (tuple, typing.Union) or str(origin) == "<class 'types.UnionType'>":
        for arg in typing.get_args(tp):
            if arg is not type(None) and arg is not Ellipsis and (found := allowed(arg)) is not None:
                return found
    return None


@dataclass(frozen=True)
class Settings:
    """What every computing command takes. Subclasses add their options and their own ``n``."""

    model: str = field(default="organism:balanced", metadata=_help("HF id | local dir | organism:<name>"))
    data: str = field(
        default="organism:shapes",
        metadata=_help("organism:shapes | mmmu-pro:<dir>[#standard-10|standard-4|vision] | jsonl:<file>"),
    )
    n: int = field(default=64, metadata=_help("number of samples"))
    batch_size: int = field(default=8, metadata=_help("samples per forward"))
    seed: int = field(default=0, metadata=_help("seeds noise images, feature noise and donor pairing"))
    dtype: Dtype | None = field(default=None, metadata=_help("model dtype (default: the checkpoint's)"))
    out: str = field(default="runs/mech", metadata=_help("output directory"))
    device: str | None = field(default=None, metadata=_help("cpu | cuda | cuda:1 ..."))
    device_map: str | None = field(
        default=None, metadata=_help("e.g. auto (shards the model over GPUs with accelerate)")
    )
    overwrite: bool = field(
        default=False,
        metadata=_help(
            "replace a result of other settings in --out (default: refuse, so that runs never mix)"
        ),
    )
    verbose: bool = field(default=False, metadata=_help("show transformers' loading bars and messages"))

    command: typing.ClassVar[str] = ""
    #: deprecated field name -> its new name (:func:`mech.deprecation.renamed_fields`)
    renamed: typing.ClassVar[dict[str, str]] = {}
    #: commands that shard their batches (--shard K/N, torchrun)
    sharded: typing.ClassVar[bool] = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # a list from Python code or argparse: keep settings hashable
                object.__setattr__(self, f.name, value := tuple(value))
            choices = allowed(hints[f.name])
            if choices is None or value is None:
                continue
            for v in value if isinstance(value, tuple) else (value,):
                if v not in choices:
                    raise ConfigError(
                        f"{self.command or type(self).__name__} {f.name}={v!r}; allowed: "
                        f"{', '.join(map(str, choices))}"
                    )
        for name in ("n", "batch_size"):
            value = getattr(self, name, None)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"{name}={value!r}; pass a positive integer (or leave it out for the default, "
                    f"{getattr(type(self), name, None)})."
                )

    def identity(self) -> dict[str, Any]:
        """The fields that change the numbers (every field but :data:`EXECUTION`), JSON-able."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if k not in EXECUTION
        }

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (checked like a new object; a deprecated field name warns)."""
        changes = translate(f"{type(self).__name__}.replace", changes, type(self).renamed)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ShardedSettings(Settings):
    shard: str | None = field(
        default=None,
        metadata=_help(
            "compute only the batches k with k %% N == K (0 <= K < N) into the same output (K/N); "
            "default: torchrun's RANK/WORLD_SIZE, else every batch"
        ),
    )
    progress: bool = field(default=True, metadata=_help("show a progress bar"))

    sharded: typing.ClassVar[bool] = True


@dataclass(frozen=True)
class InspectSettings(Settings):
    """``mech inspect``: load a model, prepare samples, print the architecture table and token groups."""

    n: int = field(default=4, metadata=_help("number of samples"))

    command: typing.ClassVar[str] = "inspect"


@renamed_fields(ablation="removal")
@dataclass(frozen=True)
class ReportSettings(Settings):
    """``mech report``: its steps (:data:`mech.runs.jobs.STEPS`: eval -> attention -> patch ->
    contrib), written to report.md."""

    n: int | None = field(default=None, metadata=_help("samples per step (default: each step's own)"))
    compare: tuple[str, ...] | None = field(
        default=None,
        metadata=_help(
            "two or more model specs side by side (without names: " + " ".join(DEFAULT_COMPARE) + ")",
            nargs="*",
        ),
    )
    removal: Removal = field(default="resample", metadata=_help("the contrib step's --removal"))
    progress: bool = field(default=True, metadata=_help("show a progress bar per step"))

    command: typing.ClassVar[str] = "report"

    def models(self) -> list[str]:
        """The model specs this report measures."""
        if self.compare is None:
            return [self.model]
        return list(self.compare) or list(DEFAULT_COMPARE)

    def step(self, cls: type[Settings], model: str, out: str) -> Settings:
        """The settings of one step: this report's shared fields, the step's own defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        shared = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k in names and k not in ("model", "out", "n", "compare")
        }
        return cls(**shared, model=model, out=out, n=self.n or cls.n)


@dataclass(frozen=True)
class MergeSettings:
    """``mech merge OUT``: assemble the results of sharded runs found in an output directory."""

    out: str = field(
        default="runs/mech", metadata=_help("the --out directory of the sharded runs", positional=True)
    )

    command: typing.ClassVar[str] = "merge"


#: command -> settings class of the commands that compose the instruments; every command, the instruments'
#: included: :data:`mech.runs.jobs.COMMANDS`
COMMANDS: dict[str, type] = {cls.command: cls for cls in (ReportSettings, InspectSettings, MergeSettings)}
