"""Reading image and label files into numpy arrays.

One place that turns "any file PIL can open" into the two array shapes the
rest of the project relies on: (H, W, 3) uint8 RGB for images, and the raw
stored values for label maps. Decoding is forced inside ``try`` so broken
files fail here, with their path, instead of deep inside a DataLoader worker.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from datus.data.errors import DatasetError, ImageReadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "check_max_pixels",
    "image_size",
    "read_image",
    "read_label_image",
    "to_index_map",
]

#: File suffixes (lower case) treated as images when listing folders.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

#: Largest image (width x height) decoded by default: 50 MP is above every common camera
#: (48 MP phones included) and keeps one decoded image and its float copy for resizing under
#: ~1 GB; larger files are refused from their header, before any pixel is decoded.
DEFAULT_MAX_PIXELS: int = 50_000_000

T = TypeVar("T")

_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError, Image.DecompressionBombError)


def check_max_pixels(value: float | None, setting: str = "dataset.max_pixels") -> int | None:
    """Validate a pixel limit: a positive whole number (``5e7`` allowed) or None for no limit."""
    if value is None:
        return None
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        raise DatasetError(f"{setting}={value!r} must be a positive whole number of pixels, or null for no limit")
    return int(value)


def _decode(path: Path, convert: Callable[[Image.Image], T], max_pixels: int | None = None) -> T:
    """Open ``path``, force full decoding and apply ``convert`` while the file is open.

    Truncated, empty and non-image files raise :class:`ImageReadError` here,
    naming the path, instead of failing later inside a DataLoader worker. Files
    of more than ``max_pixels`` pixels are refused from their header, before decoding.
    """
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageReadError(f"cannot read image {path}: the file is empty (0 bytes)")
        with Image.open(path) as im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageReadError(
                    f"cannot read image {path}: {width}x{height} is {width * height / 1e6:.1f} MP, more than "
                    f"dataset.max_pixels={max_pixels} ({max_pixels / 1e6:g} MP); downscale the file or raise "
                    "dataset.max_pixels (null: no limit)"
                )
            with warnings.catch_warnings():
                # palette+transparency warnings: handled by converting through RGBA
                warnings.simplefilter("ignore", UserWarning)
                im.load()
                return convert(im)
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise ImageReadError(f"cannot read image {path}: file does not exist") from e
    except _READ_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def _int_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16/32-bit integer pixels to 8 bit (16-bit range divides by 257; wider ranges are min-max scaled)."""
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
    if lo < 0 or hi > 65535:
        arr = (arr - lo) / max(hi - lo, 1.0) * 255.0
    else:
        arr = arr / 257.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map float pixels to 8 bit: [0, 1] -> x255, [0, 255] kept, anything else min-max scaled."""
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
    if lo >= 0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo < 0 or hi > 255.0:
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to a (H, W, 3) uint8 RGB array."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I"):  # "I", "I;16", "I;16B", "I;16L", "I;16N"
        gray = _int_to_uint8(np.asarray(im))
    elif mode == "F":
        gray = _float_to_uint8(np.asarray(im))
    elif mode in ("P", "PA"):
        rgba = im.convert("RGBA")  # goes through RGBA so palette transparency is handled, then dropped
        return np.asarray(rgba, dtype=np.uint8)[..., :3].copy()
    else:  # 1, L, LA, La, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return np.repeat(gray[..., None], 3, axis=2)


def read_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read any image file as a (H, W, 3) uint8 **RGB** array, EXIF orientation applied.

    Grayscale, alpha, palette, 16-bit, float, CMYK and 1-bit files are all
    converted; 16-bit data is scaled (/257), never clipped. Unreadable files, and
    files of more than ``max_pixels`` pixels (None: no limit of ours; PIL's own
    decompression-bomb guard, ~179 MP, stays), raise :class:`ImageReadError` naming the path.
    """
    return _decode(
        Path(path),
        lambda im: np.ascontiguousarray(_to_rgb_array(ImageOps.exif_transpose(im))),
        check_max_pixels(max_pixels),
    )


def read_label_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label file's stored values unchanged (palette indices, not colours; no EXIF rotation).

    Returns (H, W) for single-channel files and (H, W, C) for colour files;
    callers decide what the values mean.
    """
    arr = _decode(Path(path), lambda im: np.array(im))
    return arr.astype(np.uint8) if arr.dtype == bool else arr


def image_size(path: str | os.PathLike[str], exif: bool = True) -> tuple[int, int]:
    """Return (H, W) of an image from its header, without decoding pixels (EXIF rotation applied
    unless ``exif=False``: label files are read unrotated)."""
    return displayed_size(*image_header(path, exif=exif))


#: EXIF orientations that turn a photo by 90° for display (its height and width swap).
SWAPS_AXES = (5, 6, 7, 8)


def displayed_size(h: int, w: int, orientation: int) -> tuple[int, int]:
    """(H, W) of stored pixels of size ``h x w`` once turned by EXIF ``orientation`` for display."""
    return (w, h) if orientation in SWAPS_AXES else (h, w)


def image_header(path: str | os.PathLike[str], exif: bool = True) -> tuple[int, int, int]:
    """``(H, W, EXIF orientation)`` of the stored pixels, from the header (orientation 1 when
    ``exif=False`` or none is stored; 5-8 swap height and width when displayed)."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageReadError(f"cannot read image {path}: the file is empty (0 bytes)")
        with Image.open(path) as im:
            w, h = im.size
            # PIL decodes a whole PNG to look for an eXIf chunk after its pixels: skip that when it has none
            reads_exif = exif and (im.format != "PNG" or "exif" in im.info or _png_has_exif(path))
            orientation = im.getexif().get(0x0112, 1) if reads_exif else 1
    except ImageReadError:
        raise
    except _READ_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return h, w, int(orientation)


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W, ...) turned as EXIF ``orientation`` turns a photo for display (PIL's
    ``exif_transpose``): what a label map drawn on the stored pixels needs to match the displayed photo."""
    ops = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
           8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops.get(int(orientation), ops[1])(array))


def _png_has_exif(path: Path) -> bool:
    """Whether a PNG file holds an ``eXIf`` chunk, from its chunk headers only (no pixel decoded)."""
    with open(path, "rb") as f:
        f.seek(8)  # the signature
        while header := f.read(8):
            if len(header) < 8:
                return False
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"eXIf":
                return True
            if kind == b"IEND":
                return False
            f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return False


def to_index_map(raw: np.ndarray, path: Path) -> np.ndarray:
    """Return a single-channel class-index map from a raw label array.

    Colour files whose channels are all equal (grey saved as RGB) are
    accepted; genuinely coloured masks raise :class:`DatasetError`.
    """
    if raw.ndim == 2:
        return raw
    if raw.ndim == 3 and raw.shape[2] in (1, 2):  # L or LA: the grey channel holds the ids
        return raw[..., 0]
    if raw.ndim == 3 and raw.shape[2] in (3, 4):  # RGB/RGBA saved from a grey map: ignore alpha
        colour = raw[..., :3]
        if all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[2])):
            return colour[..., 0]
    raise DatasetError(
        f"mask {path} has shape {raw.shape}: expected a single-channel class-index image "
        "(one class id per pixel), not a colour-coded mask"
    )
