"""Base class shared by all segmentation datasets.

Subclasses only say where files are (``_find_samples``) and what mask values
mean (``_decode_mask``); this class does reading, checking and tensor
conversion so every dataset returns the same item format:

``{"image": uint8 (3, H, W) RGB, "mask": int64 (H, W) with 255 = void, "stem": str, "index": int}``
(``"mask"`` only when the split has masks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from datus.data.errors import DatasetError, ImageReadError, MaskError
from datus.data.files import format_names
from datus.data.io import (
    DEFAULT_MAX_PIXELS,
    SWAPS_AXES,
    check_max_pixels,
    displayed_size,
    image_header,
    orient,
    read_image,
    read_label_image,
)
from datus.data.io import image_size as header_size
from datus.data.sample import Sample
from datus.masks import upsample_nearest

__all__ = ["MASK_SIZE_MISMATCH", "DatasetError", "Sample", "SegmentationDataset"]

log = logging.getLogger(__name__)

#: What to do with a mask whose size differs from its photo's (``dataset.mask_size_mismatch``):
#: refuse the dataset listing every such pair, resize the mask to the photo (nearest neighbour:
#: labels are never interpolated), or leave those images out of evaluation (all their pixels void).
MASK_SIZE_MISMATCH = ("error", "resize", "skip")
#: Which pixels a label mask was drawn on when its photo carries an EXIF orientation (``dataset.exif``):
#: ``error`` refuses the photos for which the files cannot tell (flips, 180°, square photos) and names
#: the setting; ``displayed``: the photo as displayed (turned by its EXIF orientation), the mask as
#: stored; ``stored``: the photo's stored pixels, so each mask is turned as its photo is.
EXIF_MASKS = ("error", "displayed", "stored")
#: Label files in these formats lose label values along every edge (lossy compression): refused.
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_TURNS = {2: "mirrored", 3: "rotated 180°", 4: "flipped upside down", 5: "mirrored and rotated 90°",
          6: "rotated 90° clockwise", 7: "mirrored and rotated 90°", 8: "rotated 90° counter-clockwise"}


def lossy_label_file(path: Path) -> bool:
    """Whether ``path`` holds lossy-compressed pixels (JPEG by its name, WebP unless its first chunk is
    the lossless ``VP8L``): a label map stored so has wrong values along every edge."""
    suffix = path.suffix.lower()
    if suffix in LOSSY_SUFFIXES:
        return True
    if suffix != ".webp":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False  # unreadable: reported when read
    return b"VP8L" not in head

Transform = Callable[[dict[str, Any]], dict[str, Any]]


class SegmentationDataset(Dataset):
    """Images (and optional class-index masks) of one split of one dataset.

    Attributes: ``name`` (config name), ``classes``, ``num_classes``,
    ``ignore_index`` (always 255 in returned masks), ``samples``,
    ``has_masks``, ``root``, ``split``, ``transform``, ``max_pixels``
    (larger images are refused from their header: :func:`datus.data.read_image`),
    ``ignored_files`` (entries named like images that are not files: listed in ``summary.json``),
    ``mask_size_mismatch`` (one of :data:`MASK_SIZE_MISMATCH`) and ``mismatched_masks`` (every pair
    whose mask and photo differ in size, found from their headers when the split is listed).
    """

    name: ClassVar[str] = "base"
    ignore_index: int = 255
    #: The settings to check when a mask's values fall outside the classes (named in the error).
    label_settings: ClassVar[str] = ""
    #: The "thing" classes (countable objects, vs "stuff"): the foreground of a foreground/background
    #: evaluation (:mod:`datus.attention`); empty where the dataset does not say.
    things: ClassVar[tuple[str, ...]] = ()
    #: Whether the dataset reads every mask when built (:meth:`check_masks`), listing wrong sizes among
    #: every other bad mask; otherwise a wrong size is listed from the headers, alone.
    checks_every_mask: ClassVar[bool] = False
    #: Whether the masks are colour codes that :meth:`_decode_mask` reads robustly from lossy files (SUIM
    #: thresholds its codes); elsewhere a JPEG or lossy WebP label file is refused by name.
    lossy_masks_ok: ClassVar[bool] = False

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        classes: tuple[str, ...] = (),
        transform: Transform | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        mask_size_mismatch: str = "error",
        exif: str = "error",
    ) -> None:
        if mask_size_mismatch not in MASK_SIZE_MISMATCH:
            raise DatasetError(f"dataset.mask_size_mismatch={mask_size_mismatch!r}: choose one of "
                               f"{', '.join(MASK_SIZE_MISMATCH)}")
        if exif not in EXIF_MASKS:
            raise DatasetError(f"dataset.exif={exif!r}: choose one of {', '.join(EXIF_MASKS)}")
        self.mask_size_mismatch = mask_size_mismatch
        self.exif = exif
        self.root = Path(root).expanduser()
        self.split = str(split)
        self.classes = tuple(str(c) for c in classes)
        self.transform = transform
        self.max_pixels = check_max_pixels(max_pixels)
        self._load_samples()

    def _load_samples(self) -> None:
        """Find and check this split's samples (the constructor's work, and :meth:`with_split`'s)."""
        #: Entries named like images that are not readable files (loops, FIFOs, ...): ``{"file", "reason"}``.
        self.ignored_files: list[dict[str, str]] = []
        self.samples: list[Sample] = sorted(self._find_samples(), key=lambda s: s.stem)
        if not self.samples:
            raise DatasetError(
                f"{self.name}: no images found for split {self.split!r} under {self.root}; check dataset.root"
            )
        with_mask = sum(s.mask is not None for s in self.samples)
        if 0 < with_mask < len(self.samples):
            raise DatasetError(
                f"{self.name} split {self.split!r} under {self.root}: some samples have masks, others not"
            )
        self.has_masks = with_mask > 0
        self._check_mask_formats()
        self._check_mask_sizes()

    def _check_mask_formats(self) -> None:
        """Refuse label masks stored in a lossy format, every one named (the photos may be JPEG)."""
        if not self.has_masks or self.lossy_masks_ok:
            return
        lossy = [str(s.mask) for s in self.samples if lossy_label_file(s.mask)]
        if lossy:
            raise MaskError(f"{len(lossy)} of {len(self.samples)} label masks of {self.name} split {self.split!r} are "
                            f"stored in a lossy format (JPEG or lossy WebP), which changes label values along every "
                            f"edge: {format_names(lossy, 5)}; save the label maps losslessly (PNG; the photos may "
                            "stay JPEG)")

    def _check_mask_sizes(self) -> None:
        """Compare every mask's size with its photo's, from the files' headers (no pixel decoded), and
        act on ``mask_size_mismatch``: ``error`` lists every such pair in one :class:`MaskError`."""
        #: ``{"stem", "mask", "image", "mask_size", "image_size"}`` (sizes as "WxH") of every mismatched pair
        self.mismatched_masks: list[dict[str, str]] = []
        #: stem -> EXIF orientation of the photos that carry one (``dataset.exif=stored`` turns their masks)
        self._orientation: dict[str, int] = {}
        self._mismatched: set[str] = set()
        if not self.has_masks:
            return
        unclear = []
        for sample in self.samples:
            try:
                h, w, orientation = image_header(sample.image)
                mask = self._mask_size(sample.mask)
            except ImageReadError:
                continue  # an unreadable image is skipped and named when read; a bad mask stops the run there
            image = displayed_size(h, w, orientation)
            if orientation != 1:
                self._orientation[sample.stem] = orientation
                turned = f"{sample.image} (EXIF orientation {orientation}: displayed {_TURNS.get(orientation, 'turned')})"
                sizes_tell = orientation in SWAPS_AXES and h != w  # only a 90° turn of a non-square photo shows
                if self.exif == "stored":
                    image = (h, w)  # the mask is turned with its photo when read
                elif self.exif == "error" and not (sizes_tell and mask == image):
                    unclear.append(f"{turned}: its mask {sample.mask} has the stored pixels' size, {w}x{h}, not the "
                                   "displayed photo's" if sizes_tell and mask == (h, w) else
                                   f"{turned}: whether its mask {sample.mask} was drawn on the displayed photo "
                                   "or on its stored pixels cannot be told from their sizes")
                    continue
            if image != mask:
                self.mismatched_masks.append({"stem": sample.stem, "mask": str(sample.mask), "image": str(sample.image),
                                              "mask_size": f"{mask[1]}x{mask[0]}", "image_size": f"{image[1]}x{image[0]}"})
        self._mismatched = {entry["stem"] for entry in self.mismatched_masks}
        if unclear:
            raise MaskError(f"{len(unclear)} photos of {self.name} split {self.split!r} carry an EXIF orientation and "
                            "have label masks:\n  " + "\n  ".join(unclear[:10])
                            + (f"\n  ... ({len(unclear) - 10} more)" if len(unclear) > 10 else "")
                            + "\nset dataset.exif=displayed (the masks were drawn on the photos as displayed) or "
                            "dataset.exif=stored (on their stored pixels: each mask is turned as its photo is)")
        if not self.mismatched_masks:
            return
        count = f"{len(self.mismatched_masks)} of {len(self.samples)} masks of {self.name} split {self.split!r}"
        if self.mask_size_mismatch == "error" and not self.checks_every_mask:
            pairs = "\n  ".join(f"{e['mask']} is {e['mask_size']} (width x height) but its image {e['image']} is "
                                f"{e['image_size']}" for e in self.mismatched_masks)
            raise MaskError(f"{count} do not have their photo's size:\n  {pairs}\n"
                            "set dataset.mask_size_mismatch=resize (each such mask resized to its photo, nearest "
                            "neighbour) or dataset.mask_size_mismatch=skip (those images left out of evaluation)")
        if self.mask_size_mismatch == "error":
            return  # check_masks lists them with every other bad mask
        if self.mask_size_mismatch == "resize":
            log.warning("%s do not have their photo's size: resized to it with nearest neighbour "
                        "(dataset.mask_size_mismatch=resize)", count)
        else:
            log.warning("%s do not have their photo's size: those images are left out of evaluation "
                        "(dataset.mask_size_mismatch=skip): %s", count,
                        ", ".join(e["stem"] for e in self.mismatched_masks))

    def _mask_size(self, path: Path) -> tuple[int, int]:
        """(H, W) of a mask file as :meth:`_read_raw_mask` reads it, from its header."""
        return header_size(path, exif=False)

    def mask_size_report(self) -> dict[str, Any] | None:
        """What ``summary.json`` and ``metrics.json`` say of the mismatched pairs (None: there are none)."""
        if not self.mismatched_masks:
            return None
        done = {"resize": "mask resized to its photo (nearest neighbour)", "skip": "image left out of evaluation"}
        return {"setting": f"dataset.mask_size_mismatch={self.mask_size_mismatch}",
                "what": done.get(self.mask_size_mismatch, "refused"), "pairs": self.mismatched_masks}

    @property
    def unscored(self) -> list[str]:
        """Stems of the images left out of evaluation (``mask_size_mismatch=skip``: every pixel void)."""
        return [e["stem"] for e in self.mismatched_masks] if self.mask_size_mismatch == "skip" else []

    # ---- to implement in subclasses -------------------------------------------------
    def _find_samples(self) -> list[Sample]:
        """Locate and pair this split's files (use :func:`datus.data.files.pair_samples`)."""
        raise NotImplementedError

    def _decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Turn the raw stored mask values into class indices, void -> 255."""
        raise NotImplementedError

    def _read_raw_mask(self, path: Path) -> np.ndarray:
        """Read the stored mask values; override for colour-coded masks."""
        return read_label_image(path)

    # ---- public API -----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of real classes (void not counted)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def read_mask(self, sample: Sample, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """Read and check ``sample``'s mask as an int64 (H, W) class-index map with 255 for void.

        Raises :class:`MaskError` naming the file if it cannot be read, its size differs
        from the image's (``image_size``, else the image file's header; an image whose
        header is unreadable is reported when the image is read, not here) or it holds
        values outside ``[0, num_classes)`` and 255. A mask of another size than its photo is
        resized to it (``mask_size_mismatch=resize``) or read as all void (``skip``).
        """
        if sample.mask is None:
            raise MaskError(f"{self.name} split {self.split!r} has no mask for {sample.image}")
        if sample.stem in self._mismatched and self.mask_size_mismatch == "skip":
            return np.full(image_size or header_size(sample.image), 255, dtype=np.int64)
        try:
            raw = self._read_raw_mask(sample.mask)
            mask = np.asarray(self._decode_mask(raw, sample.mask)).astype(np.int64, copy=False)
            if self.exif == "stored" and sample.stem in self._orientation:
                mask = orient(mask, self._orientation[sample.stem])  # drawn on the stored pixels
        except MaskError:
            raise
        except DatasetError as err:  # unreadable file, colour-coded mask, void value clash
            raise MaskError(str(err).replace("cannot read image", "cannot read mask", 1)) from err
        expected = image_size
        if expected is None:
            try:
                expected = header_size(sample.image)
            except ImageReadError:
                expected = None
        if expected is not None and tuple(mask.shape) != tuple(expected) and self.mask_size_mismatch == "resize":
            mask = upsample_nearest(mask, tuple(expected))
        if expected is not None and tuple(mask.shape) != tuple(expected):
            h, w = mask.shape[:2]
            raise MaskError(
                f"mask {sample.mask} is {w}x{h} (width x height) but its image {sample.image} is "
                f"{expected[1]}x{expected[0]} (dataset.mask_size_mismatch=resize|skip handles such pairs)"
            )
        bad = ((mask < 0) | (mask >= self.num_classes)) & (mask != 255)
        if bad.any():
            values = [str(v) for v in np.unique(mask[bad]).tolist()]
            raise MaskError(
                f"mask {sample.mask} has label values {format_names(values, 10)} outside "
                f"0..{self.num_classes - 1} ({self.name}: {self.num_classes} classes) and 255 (void)"
                + (f"; check {self.label_settings}" if self.label_settings else "")
            )
        return mask

    def check_masks(self) -> SegmentationDataset:
        """Read every mask (not the images' pixels) and raise one :class:`MaskError` listing the bad ones.

        Called before any work by datasets whose masks are user files (``folder``): a wrong-size
        mask or an unknown label is an error up front, never a skipped image. Returns ``self``.
        """
        problems = []
        for sample in self.samples:
            try:
                self.read_mask(sample)
            except DatasetError as err:
                problems.append(str(err))
        if problems:
            shown = "\n  ".join(problems[:5])
            more = f"\n  ... ({len(problems) - 5} more)" if len(problems) > 5 else ""
            raise MaskError(
                f"{len(problems)} of {len(self.samples)} masks of {self.name} split {self.split!r} cannot be used "
                f"(fix or remove them, with their images):\n  {shown}{more}"
            )
        return self

    def with_split(self, split: str) -> SegmentationDataset:
        """The same dataset (root, classes, transform) on another split, e.g. to train on ``train``
        and apply to ``val``; raises :class:`DatasetError` if that split has no images."""
        import copy

        other = copy.copy(self)
        other.split = str(split)
        other._load_samples()
        return other

    def load(self, index: int) -> dict[str, Any]:
        """Read item ``index`` without applying ``transform``."""
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self!r}")
        index %= n
        sample = self.samples[index]
        image = read_image(sample.image, self.max_pixels)
        item: dict[str, Any] = {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "stem": sample.stem,
            "index": index,
        }
        if self.has_masks:
            item["mask"] = torch.from_numpy(self.read_mask(sample, image.shape[:2]))
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.load(int(index))
        return self.transform(item) if self.transform is not None else item

    def validate(self) -> SegmentationDataset:
        """Read every image and mask once; raise on the first problem. Returns ``self``."""
        for i in range(len(self)):
            self.load(i)
        return self

    def __repr__(self) -> str:
        masks = "with masks" if self.has_masks else "no masks"
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, {masks}, root='{self.root}')"
        )
