"""Data specs: ``organism:shapes`` | ``mmmu-pro:<dir>[#config]`` | ``jsonl:<file>``.

Every loader returns a :class:`Dataset`: a list of plain sample dicts with at least ``id``,
``question``, ``images`` (list of PIL images, possibly empty), ``options`` (list of str, possibly
empty) and ``answer`` (option letter, or answer text when there are no options), plus
``prompt_style`` and ``source``; and the list of skipped rows with reasons (nothing is dropped
silently). ``strict=True`` raises :class:`~mech.errors.DataError` at the first bad row instead.
Every image, of every scheme, is read by :func:`mech.prepare.images.read_image` (transparency onto
white, EXIF orientation, 16-bit scaled to 8-bit); a row whose image cannot be read (undecodable
bytes, a decompression bomb, a missing file), whose answer is missing or whose options are not a
list of text is skipped with the reason, and never fails the data set
(:meth:`Dataset.skipped_summary`).

``mmmu-pro:<dir>`` reads local MMMU-Pro parquet files (columns ``id, question, options, answer,
image_1 … image_7, subject, …``; the ``vision`` configuration has one ``image`` column and the
question inside the image). ``<dir>`` holds the parquet files directly, or is the MMMU-Pro root
with the configuration folders ``standard (4 options)``, ``standard (10 options)``, ``vision``;
pick one with ``#standard-4``, ``#standard-10`` (default) or ``#vision``, e.g.
``mmmu-pro:/data/MMMU_Pro#vision``. ``options`` is a string holding a Python list literal (parsed
with ``ast.literal_eval``, never ``eval``; an option that is itself a list stays one option, its repr);
images are structs ``{bytes, path}``. Rows are read as MMMU-Pro's official code reads them
(:mod:`mech.prepare.mmmu_pro`): the question verbatim; one image per ``<image N>`` mention of
question and options, in order of mention, repeats included (unmentioned columns are listed in
the sample's ``images_unused``); the images after the text in the user turn
(``image_position="after"``); 1730 rows in ``standard (10 options)``. A row whose answer letter
lies beyond its options (the official code keeps it, always wrong) is kept and listed in
:attr:`Dataset.notes`. ``#standard-10,images=lmms-eval`` takes lmms-eval's image convention
instead (the mentioned images once each, sorted by number).

``jsonl:<file>``: one JSON object per line with ``id``, ``question``, ``image`` or ``images``
(paths relative to the file), ``options`` (optional list) and ``answer`` (a letter or the text of
an option; free text without options), ``category`` (optional: the question type that
``contrib.json``'s ``by_category`` groups by; MMMU-Pro's is its ``subject``, the organism's its template).

What a sample is, the :class:`Dataset` that holds them and the one prompt every instrument formats
from a sample (:func:`format_prompt`, styles :data:`PROMPT_STYLES`) are :mod:`mech.prepare.samples`,
re-exported here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mech.errors import ConfigError, DataError, InputError, SpecError
from mech.prepare.images import read_image
from mech.prepare.mmmu_pro import (
    COT,
    COT_VISION,
    DIRECT,
    DIRECT_VISION,
    config_files,
    image_columns,
    option_strings,
    parse_fragment,
)
from mech.prepare.samples import (
    COT_OPEN,
    DIRECT_OPEN,
    LETTERS,
    PROMPT_STYLES,
    SCORINGS,
    Dataset,
    answer_index,
    format_prompt,
    skipped_summary,
)

# the samples, their Dataset and their prompt (mech.prepare.samples) and MMMU-Pro's prompts are re-exported
__all__ = [
    "COT",
    "COT_OPEN",
    "COT_VISION",
    "DIRECT",
    "DIRECT_OPEN",
    "DIRECT_VISION",
    "LETTERS",
    "PROMPT_STYLES",
    "SCHEMES",
    "SCORINGS",
    "Dataset",
    "answer_index",
    "format_prompt",
    "load_data",
    "skipped_summary",
]


SCHEMES = ("organism", "mmmu-pro", "jsonl")
# ---------------------------------------------------------------------------------- validation


class _Skip(Exception):
    """A row that cannot be used; the message is the reason, ``key`` the row's id if known."""

    def __init__(self, reason: str, key: str | None = None):
        super().__init__(reason)
        self.key = key


def _check_options(options: Any, nested: bool = False) -> list[str]:
    """The options as text; ``nested``: any literal (a list, None, ...) is one option, ``f"{o}"``
    (MMMU-Pro's ``parse_options``), else only strings and numbers are."""
    if isinstance(options, np.ndarray):  # a parquet list column
        options = options.tolist()
    if isinstance(options, str):
        try:
            options = ast.literal_eval(options)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            raise _Skip(f"malformed options (not a Python list literal: {type(exc).__name__})") from None
    if not isinstance(options, (list, tuple)) or not options:
        raise _Skip("malformed options (need a non-empty list of strings)")
    if len(options) > len(LETTERS):
        raise _Skip(f"too many options ({len(options)} > {len(LETTERS)})")
    if nested:
        return option_strings(options)
    if not all(isinstance(o, (str, int, float)) for o in options):
        raise _Skip("malformed options (an option is not text)")
    return [str(o) for o in options]


def _check_answer(answer: Any, options: list[str], outside: bool = False) -> str:
    """The gold letter (or open answer text); ``outside``: keep a letter beyond the options."""
    if options:
        text = "" if _empty(answer) else str(answer).strip()
        if not text:
            raise _Skip("missing answer")
        if len(text) == 1 and text.upper() in LETTERS:
            if LETTERS.index(text.upper()) >= len(options) and not outside:
                raise _Skip(f"answer letter {text!r} outside the options A-{LETTERS[len(options) - 1]}")
            return text.upper()
        if text in options:
            return LETTERS[options.index(text)]
        raise _Skip(f"answer {text[:40]!r} is neither an option letter nor an option text")
    if _empty(answer) or not str(answer).strip():
        raise _Skip("missing answer")
    return str(answer).strip()


def _image(cell: Any, what: str, base: Path):
    """The RGB image of an image cell (struct, bytes or path; :func:`mech.prepare.images.read_image`)."""
    try:
        return read_image(cell, name=what, base=base)
    except InputError as exc:
        raise _Skip(str(exc)) from None


def _empty(cell: Any) -> bool:
    if cell is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(cell)) if not isinstance(cell, (dict, bytes, bytearray, list)) else False
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------- loaders


def _collect(rows, make, n: int | None, strict: bool, name: str) -> tuple[list[dict], list[tuple[str, str]]]:
    samples, skipped = [], []
    for key, row in rows:
        if n is not None and len(samples) >= n:
            break
        try:
            samples.append(make(key, row))
        except (_Skip, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            if not isinstance(exc, _Skip):  # a value of an unexpected type in a cell: the row is unusable
                exc = _Skip(f"unreadable row ({type(exc).__name__}: {str(exc)[:80]})")
            key = exc.key or key
            if strict:
                raise DataError(
                    f"{name}: row {key}: {exc}. Fix or remove the row, or load with strict=False "
                    "to skip it (skips are counted and reported)."
                ) from None
            skipped.append((str(key), str(exc)))
    return samples, skipped


def _mmmu(rest: str, n: int | None, strict: bool) -> Dataset:
    import pandas as pd

    path, _, fragment = rest.partition("#")
    config, order = parse_fragment(fragment)
    files, folder = config_files(Path(path).expanduser(), config)
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(f))
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise DataError(f"cannot read parquet file {str(f)!r} ({exc}); re-download it.") from exc
    df = pd.concat(frames, ignore_index=True)
    vision = "image" in df.columns and "image_1" not in df.columns
    need = {"id", "options", "answer"} | (set() if vision else {"question"})
    if not need <= set(df.columns):
        raise DataError(
            f"{files[0]} lacks the MMMU-Pro columns {sorted(need - set(df.columns))}; columns found: "
            f"{list(df.columns)}."
        )
    base = files[0].parent
    image_cols = [c for c in df.columns if re.fullmatch(r"image_\d+", c)]

    notes: list[tuple[str, str]] = []

    def make(key, row) -> dict:
        options = _check_options(row["options"], nested=True)
        answer = _check_answer(row["answer"], options, outside=True)
        extra: dict[str, Any] = {}
        if vision:
            if _empty(row["image"]):
                raise _Skip("no image in the 'image' column")
            images, question, cols = [_image(row["image"], "image", base)], "", ["image"]
        else:
            question = str(row["question"]) if not _empty(row["question"]) else ""
            cols = image_columns(question, options, order)
            decoded: dict[str, Any] = {}
            for c in dict.fromkeys(cols):  # a repeated mention is the same image: decode it once
                if c not in row.index or _empty(row[c]):
                    raise _Skip(f"the question refers to <{c.replace('_', ' ')}> but {c} is empty")
                decoded[c] = _image(row[c], c, base)
            images = [decoded[c] for c in cols]
            extra["images_unused"] = [c for c in image_cols if c not in decoded and not _empty(row[c])]
        if LETTERS.index(answer) >= len(options):
            notes.append(
                (
                    str(row["id"]),
                    f"answer {answer} lies beyond the {len(options)} option(s); kept as "
                    "MMMU-Pro's official code keeps it (always wrong)",
                )
            )
        return dict(
            id=str(row["id"]),
            question=question,
            options=options,
            answer=answer,
            images=images,
            subject=None if "subject" not in row.index or _empty(row["subject"]) else str(row["subject"]),
            options_in_image=vision,
            prompt_style="direct",
            source="mmmu-pro",
            image_columns=cols,
            image_position="after",
            **extra,
        )

    samples, skipped = _collect(
        ((str(r["id"]) if "id" in r.index else i, r) for i, (_, r) in enumerate(df.iterrows())),
        make,
        n,
        strict,
        f"mmmu-pro:{rest}",
    )
    name = (
        f"mmmu-pro:{path}"
        + (f"#{fragment}" if fragment else "")
        + ("" if folder == "auto" else f" ({folder})")
    )
    return Dataset(name, samples, skipped, default_style="direct", scoring="letter", notes=notes)


def _jsonl(rest: str, n: int | None, strict: bool) -> Dataset:
    path = Path(rest).expanduser()
    if not path.is_file():
        raise SpecError(f"jsonl file {rest!r} does not exist; pass jsonl:<path to a .jsonl file>.")
    base = path.parent

    def rows():
        with open(path, encoding="utf-8") as fh:
            for k, line in enumerate(fh, start=1):
                if line.strip():
                    yield k, line

    def make(k, line) -> dict:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _Skip(f"line {k} is not JSON ({exc.msg})", f"line-{k}") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise _Skip(f"line {k} has no 'question' string", f"line-{k}")
        try:
            return _jsonl_sample(row, k)
        except _Skip as exc:
            raise _Skip(str(exc), str(row.get("id", f"line-{k}"))) from None

    def _jsonl_sample(row: dict, k: int) -> dict:
        options = _check_options(row["options"]) if row.get("options") is not None else []
        answer = _check_answer(row.get("answer"), options)
        paths = row.get("images", row.get("image"))
        paths = [] if paths is None else ([paths] if isinstance(paths, str) else paths)
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise _Skip("'image'/'images' must be a path or a list of paths (relative to the jsonl file)")
        images = []
        for p in paths:
            try:
                images.append(read_image(p, base=base))
            except InputError as exc:
                raise _Skip(f"image {p!r}: {exc}") from None
        return dict(
            id=str(row.get("id", f"line-{k}")),
            question=row["question"],
            options=options,
            answer=answer,
            images=images,
            prompt_style="direct",
            source="jsonl",
            category=None if row.get("category") in (None, "") else str(row["category"]),
        )

    samples, skipped = _collect(rows(), make, n, strict, f"jsonl:{rest}")
    ids = [s["id"] for s in samples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"jsonl:{rest}: duplicate ids {dup}; give every line a unique 'id'.")
    return Dataset(f"jsonl:{rest}", samples, skipped, default_style="direct", scoring="letter")


def _organism(name: str, n: int | None, seed: int) -> Dataset:
    from mech.organisms import shapes, varied

    if name not in ("shapes", "shapes-varied"):
        raise SpecError(
            f"unknown organism data set {name!r}; the organisms' data sets are 'organism:shapes' and "
            "'organism:shapes-varied'."
        )
    gen, answers = (
        (shapes.generate, shapes.ANSWERS) if name == "shapes" else (varied.generate, varied.ANSWERS)
    )
    samples = gen(n or 1000, split="test", seed=seed)
    for s in samples:
        s["images"] = [read_image(im) for im in s["images"]]
        s["prompt_style"], s["source"] = "bare", f"organism:{name}"
        # resample donors share the answer space: the question still asks the same kind of thing
        s["pair_key"] = "answers:" + ",".join(answers[s["template"]])
    return Dataset(f"organism:{name}", samples, default_style="bare", scoring="option_text")


def load_data(spec: str, n: int | None = None, seed: int = 0, *, strict: bool = False) -> Dataset:
    """Resolve a data spec into a :class:`Dataset` of at most ``n`` samples.

    ``n`` counts usable samples: rows are read in file order until ``n`` are usable; the rows
    skipped on the way are in ``dataset.skipped`` as ``(id, reason)``. ``seed`` seeds the
    generated ``organism:shapes`` set; file data sets keep file order.

    Raises:
        SpecError: unknown scheme (the message lists the valid ones), missing path or folder.
        DataError: unreadable parquet file, missing columns, duplicate ids, no usable sample at all
            (an empty file, or every row skipped), or (``strict=True``) the first bad row.
    """
    scheme, _, rest = spec.partition(":")
    if scheme not in SCHEMES or not rest:
        raise SpecError(
            f"data spec {spec!r} not understood; use one of organism:shapes, mmmu-pro:<dir>[#config], "
            "jsonl:<file>."
        )
    if n is not None and n < 1:
        raise ConfigError(f"n={n}; pass a positive number of samples (or None for all).")
    if scheme == "organism":
        data = _organism(rest, n, seed)
    elif scheme == "mmmu-pro":
        data = _mmmu(rest, n, strict)
    else:
        data = _jsonl(rest, n, strict)
    if not data.samples:
        reasons = sorted({r for _, r in data.skipped})[:3]
        raise DataError(
            f"{spec}: no usable sample ({len(data.skipped)} rows skipped"
            + (f": {'; '.join(reasons)}" if reasons else ", the file has no rows")
            + "); fix the rows or pass a data spec with at least one valid sample."
        )
    return data
