"""One way to read an image, for every data path (``organism:shapes``, ``mmmu-pro:<dir>``,
``jsonl:<file>``) and for ``m.prepare(...)``: :func:`read_image`.

It reads images the way transformers' own image utilities do, and refuses (with
:class:`~mech.errors.InputError`, whose message says what was wrong and what to pass instead) where
they would silently produce other pixels:

* files and encoded bytes are opened with ``PIL.Image.open`` and turned upright with
  ``PIL.ImageOps.exif_transpose``, as ``transformers.image_utils.load_image`` does;
* transparency is composited onto white, as ``transformers.image_transforms.convert_to_rgb``
  does (which this module calls), not dropped as a plain ``Image.convert("RGB")`` would;
* 16-bit images are scaled to 8 bits, ``round(v * 255 / 65535)``; Pillow's own ``convert`` clips
  them, so that almost every 16-bit image would become pure white;
* channel order of arrays is inferred with ``transformers.image_utils.infer_channel_dimension_format``
  (an array whose both ends could be channels, e.g. ``[4, 4, 3]``, is refused rather than guessed); float arrays in ``[0, 1]`` are scaled
  by 255 as ``transformers.image_transforms.to_pil_image`` does, but rounded (it truncates), so that
  ``uint8 / 255`` comes back exactly.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mech.errors import InputError

__all__ = ["MODES", "read_image"]

#: the PIL modes :func:`read_image` reads; every other mode goes through ``convert_to_rgb``
#: (``Image.convert``) and raises ``InputError`` where Pillow cannot convert it
MODES = (
    "1",
    "L",
    "P",
    "RGB",
    "RGBA",
    "LA",
    "PA",
    "La",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "HSV",
    "I",
    "I;16",
    "I;16L",
    "I;16B",
    "I;16N",
    "F",
)
_BAD_DECODE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError)
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_ORIENTATION = 0x0112  # EXIF tag
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


def read_image(image: Any, *, name: str | None = None, base: str | os.PathLike | None = None) -> Image.Image:
    """An RGB ``PIL.Image`` of ``image``, read as transformers' image utilities read it.

    Args:
        image: one of

            * a ``PIL.Image`` in any of the modes of :data:`MODES`:
              ``RGB`` (returned as it is when upright); ``1``, ``L``, ``CMYK``, ``YCbCr``, ``HSV``,
              ``RGBX`` (``Image.convert("RGB")``); ``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa`` (premultiplied: first
              un-premultiplied to ``LA`` / ``RGBA``) and ``P`` with a ``transparency`` entry (composited
              onto white: ``transformers.image_transforms.convert_to_rgb``); ``I;16`` / ``I;16L`` / ``I;16B`` /
              ``I;16N`` (16-bit greyscale, scaled ``round(v * 255 / 65535)``; a 16-bit
              ``transparency`` value becomes white); ``I`` (32-bit integers: must hold 0-255); ``F``
              (32-bit floats: must hold [0, 1], scaled by 255 and rounded). An EXIF orientation
              is applied (``PIL.ImageOps.exif_transpose``, as ``transformers.image_utils.load_image``);
            * a path (``str`` or ``os.PathLike``; relative to ``base`` when given) or encoded bytes
              (``bytes``, ``bytearray``, ``memoryview``) of an image file (PNG, JPEG, ...); opened with
              ``PIL.Image.open`` and checked against ``PIL.Image.MAX_IMAGE_PIXELS``;
            * an image struct ``{"bytes": ..., "path": ...}`` (Hugging Face ``datasets``' ``Image``
              feature, as in MMMU-Pro's parquet files): the bytes, else the path;
            * a numpy array or torch tensor ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` with C = 1, 3
              or 4 (channel side by ``transformers.image_utils.infer_channel_dimension_format``;
              4 channels: alpha composited onto white): ``uint8`` 0-255 as it is; ``uint16`` as
              16-bit (scaled as ``I;16``); other integer types must hold 0-255; floating types must
              hold [0, 1] and are scaled by 255 and rounded.
        name: how messages call the image (e.g. ``"image_1"``); default from the input.
        base: folder that relative paths (also a struct's ``path``) are read from.

    Returns:
        a new RGB image (or ``image`` itself when it is an upright RGB ``PIL.Image``).

    Raises:
        InputError: a missing file, a URL (mech does not download), undecodable bytes, a possible
            decompression bomb (``PIL.Image.DecompressionBombError`` or ``...Warning``), an empty
            image, an array of the wrong shape or dtype, a float image outside [0, 1], an integer
            image outside 0-255, NaN pixels, or a mode Pillow cannot convert to RGB.
    """
    if isinstance(image, Image.Image):
        return _from_pil(image, name or "the image")
    if isinstance(image, dict):
        return _from_struct(image, name or "the image", base)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _from_pil(_open_bytes(bytes(image), name or "the image"), name or "the image")
    if isinstance(image, (str, os.PathLike)):
        return _from_path(image, name, base)
    if isinstance(image, np.ndarray) or type(image).__module__.startswith("torch"):
        return _from_array(image, name or "the image array")
    raise InputError(
        f"cannot read an image from {type(image).__name__}; pass a PIL.Image, a file path, encoded "
        "image bytes, or an [H, W, 3] uint8 array."
    )


# ------------------------------------------------------------------------------- files and bytes


def _decode(source: Any, label: str, what: str) -> Image.Image:
    """``Image.open`` + ``load`` of a path or file object; a decompression bomb warning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(source)
            im.load()
            return im
        except _BOMB as exc:
            raise InputError(
                f"{label} is a possible decompression bomb ({exc}); if the file is trusted, raise "
                f"PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS}) before loading, else "
                "remove it."
            ) from None
        except _BAD_DECODE as exc:
            raise InputError(what.format(exc=exc, kind=type(exc).__name__)) from None


def _open_bytes(data: bytes, label: str) -> Image.Image:
    if not data:
        raise InputError(f"{label} has empty image bytes; re-encode the image as PNG/JPEG or drop the row.")
    return _decode(
        io.BytesIO(data),
        label,
        f"corrupt image bytes in {label} ({{kind}}); re-encode the image as PNG/JPEG or drop the row.",
    )


def _from_path(image: Any, name: str | None, base: Any) -> Image.Image:
    text = os.fspath(image)
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        raise InputError(
            f"{text[:80]!r} is a URL; mech does not download images. Download the file and pass its "
            "path (or a PIL.Image)."
        )
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    if not path.is_file():
        raise InputError(f"image file {str(path)!r} does not exist; pass an existing path or a PIL.Image.")
    label = name or repr(str(path))
    im = _decode(
        path, label, f"{str(path)!r} is not a readable image ({{exc}}); pass a PNG/JPEG file or a PIL.Image."
    )
    return _from_pil(im, label)


def _from_struct(cell: dict, label: str, base: Any) -> Image.Image:
    data, path = cell.get("bytes"), cell.get("path")
    if data:
        return _from_pil(_open_bytes(bytes(data), label), label)
    where = (
        Path(str(path))
        if path and (base is None or Path(str(path)).is_absolute())
        else (Path(base) / str(path) if path else None)
    )
    if where is not None and where.is_file():
        return _from_path(where, label, None)
    raise InputError(
        f"{label} has neither image bytes nor a readable path; give the struct its 'bytes' (or a "
        "'path' next to the data file) or drop the row."
    )


# -------------------------------------------------------------------------------------- PIL images


def _upright(im: Image.Image, label: str) -> Image.Image:
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
        return ImageOps.exif_transpose(im) if orientation not in (None, 1) else im
    except _BAD_DECODE as exc:
        raise InputError(
            f"{label} has unreadable EXIF orientation data ({type(exc).__name__}); re-save the image "
            "without EXIF or drop it."
        ) from None


def _from_pil(im: Image.Image, label: str) -> Image.Image:
    if im.width == 0 or im.height == 0:
        raise InputError(f"{label} is empty ({im.width}x{im.height} pixels); pass an image with pixels.")
    try:
        im.load()
    except _BAD_DECODE as exc:
        raise InputError(
            f"{label} cannot be decoded ({type(exc).__name__}: {exc}); re-encode it as PNG/JPEG."
        ) from None
    im = _upright(im, label)
    if im.mode == "RGB" and "transparency" not in im.info:  # an RGB key colour is composited below
        return im
    if im.mode.startswith("I;16"):
        return _sixteen_bit(im)
    if im.mode == "I":
        return _grey(_check_ints(np.asarray(im), label, "a mode 'I' image"), None)
    if im.mode == "F":
        return _grey(_floats(np.asarray(im), label), None)
    from transformers.image_transforms import convert_to_rgb

    try:
        if im.mode in _PREMULTIPLIED:  # its alpha band is "a", which convert_to_rgb would not see
            im = im.convert(_PREMULTIPLIED[im.mode])
        return Image.fromarray(convert_to_rgb(im, return_numpy=True))
    except (ValueError, OSError) as exc:
        raise InputError(
            f"{label} has mode {im.mode!r}, which Pillow cannot convert to RGB ({exc}); convert it "
            "to RGB (or RGBA) before passing it."
        ) from None


def _grey(grey: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    """RGB of an 8-bit ``[H, W]`` grey array; where ``alpha`` is False the pixel is white."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if alpha is not None:
        rgb[~alpha] = 255
    return Image.fromarray(rgb)


def _sixteen_bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im).astype(np.int64)
    key = im.info.get("transparency")
    alpha = arr != key if isinstance(key, int) else None
    return _grey(np.round(arr * 255 / 65535).astype(np.uint8), alpha)


# ------------------------------------------------------------------------------------------ arrays


def _check_ints(arr: np.ndarray, label: str, what: str) -> np.ndarray:
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise InputError(
            f"{label} is {what} with values {lo}..{hi}, outside 0-255; pass uint8 pixels (for 16-bit "
            "data an np.uint16 array or a mode 'I;16' image, which mech scales to 8 bits)."
        )
    return arr.astype(np.uint8)


def _floats(arr: np.ndarray, label: str) -> np.ndarray:
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(
            f"{label} has NaN or infinite pixels; pass finite values in [0, 1] (or uint8 0-255)."
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{label} is a float image with values {lo:g}..{hi:g}, outside [0, 1]; divide 0-255 "
            "pixels by 255 (or pass them as uint8), and undo any normalization (mean/std) first."
        )
    return np.round(arr * 255).astype(np.uint8)


def _to_numpy(image: Any, label: str) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is None or not isinstance(image, torch.Tensor):
        raise InputError(
            f"cannot read an image from {type(image).__name__}; pass a PIL.Image, a path or an array."
        )
    t = image.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _from_array(image: Any, label: str) -> Image.Image:
    from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

    arr = _to_numpy(image, label)
    shape = tuple(arr.shape)
    if arr.size == 0:
        raise InputError(f"{label} is empty (shape {shape}); pass an image with pixels.")
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim == 3:
        if shape[0] in (1, 3, 4) and shape[-1] in (1, 3, 4):
            raise InputError(
                f"{label} has shape {shape}: both its first and its last axis could be the channels, "
                "so [C, H, W] and [H, W, C] cannot be told apart; pass a PIL.Image "
                "(PIL.Image.fromarray(array)) or an array with more than 4 rows."
            )
        try:
            side = infer_channel_dimension_format(arr, num_channels=(1, 3, 4))
        except ValueError:
            side = None
        if side is None:
            raise InputError(
                f"{label} has shape {shape}: no axis of 1, 3 or 4 channels at either end; pass "
                "[H, W], [H, W, C] or [C, H, W] with C = 1, 3 or 4."
            )
        arr = np.moveaxis(arr, 0, -1) if side == ChannelDimension.FIRST else arr
    else:
        raise InputError(
            f"{label} has shape {shape}; pass one image, [H, W], [H, W, C] or [C, H, W] with C = 1, 3 "
            "or 4 (a batch: one array per image, e.g. list(batch))."
        )
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        pixels = arr
    elif arr.dtype == np.uint16:
        pixels = np.round(arr.astype(np.int64) * 255 / 65535).astype(np.uint8)
    elif kind in "iu":
        pixels = _check_ints(arr, label, f"an {arr.dtype} array")
    elif kind == "f":
        pixels = _floats(arr, label)
    else:
        raise InputError(
            f"{label} has dtype {arr.dtype}; pass uint8 pixels 0-255 or floats in [0, 1] "
            "(a boolean mask: mask.astype(np.uint8) * 255)."
        )
    channels = pixels.shape[-1]
    if channels == 1:
        return _grey(pixels[..., 0], None)
    if channels == 4:
        return _from_pil(Image.fromarray(np.ascontiguousarray(pixels)), label)
    return Image.fromarray(np.ascontiguousarray(pixels))
