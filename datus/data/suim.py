"""SUIM (underwater imagery) in the official release layout, colour-coded masks.

Layout: ``root/<split>/images/*.jpg`` and ``root/<split>/masks/*.bmp`` for
splits ``train_val`` and ``TEST``. Each mask channel is thresholded at 128
(robust to JPEG-like noise) and the bits form a code ``R*4 + G*2 + B``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datus.data.base import SegmentationDataset, Transform
from datus.data.errors import DatasetError
from datus.data.files import list_images, pair_samples, require_dir
from datus.data.io import image_size, read_image
from datus.data.sample import Sample

__all__ = ["SUIM", "SUIM_COARSE_CLASSES", "SUIM_FINE_CLASSES"]

#: The 8 SUIM categories; index = colour code R*4 + G*2 + B.
SUIM_FINE_CLASSES: tuple[str, ...] = (
    "BW",  # 000 black: background waterbody
    "HD",  # 001 blue: human divers
    "PF",  # 010 green: plants / sea-grass
    "WR",  # 011 cyan: wrecks / ruins
    "RO",  # 100 red: robots
    "RI",  # 101 magenta: reefs / invertebrates
    "FV",  # 110 yellow: fish / vertebrates
    "SR",  # 111 white: sea-floor / rocks
)
#: The 6 classes used by the DatUS paper: BW, PF and SR merged into one.
SUIM_COARSE_CLASSES: tuple[str, ...] = ("HD", "RO", "FV", "RI", "WR", "BW+PF+SR")

_FINE_TO_COARSE = {
    "BW": "BW+PF+SR", "HD": "HD", "PF": "BW+PF+SR", "WR": "WR",
    "RO": "RO", "RI": "RI", "FV": "FV", "SR": "BW+PF+SR",
}  # fmt: skip
_LUTS: dict[str, np.ndarray] = {
    "fine": np.arange(8, dtype=np.int64),
    "coarse": np.array([SUIM_COARSE_CLASSES.index(_FINE_TO_COARSE[c]) for c in SUIM_FINE_CLASSES], dtype=np.int64),
}
_CLASS_SETS = {"fine": SUIM_FINE_CLASSES, "coarse": SUIM_COARSE_CLASSES}
_SPLITS = ("train_val", "TEST")


class SUIM(SegmentationDataset):
    """SUIM with ``classes="coarse"`` (6 classes, as in DatUS) or ``"fine"`` (the 8 SUIM codes)."""

    name = "suim"
    lossy_masks_ok = True  # colour codes, each channel thresholded at 128 (:meth:`_decode_mask`)

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train_val",
        classes: str = "coarse",
        transform: Transform | None = None,
        mask_size_mismatch: str = "error", exif: str = "error",
    ) -> None:
        if classes not in _CLASS_SETS:
            raise DatasetError(
                f"dataset.classes={classes!r} is not valid for SUIM; use 'coarse' (6 classes) or 'fine' (8)"
            )
        if split not in _SPLITS:
            raise DatasetError(f"dataset.split={split!r} is not a SUIM split; use one of {', '.join(_SPLITS)}")
        self.class_set = classes
        self._lut = _LUTS[classes]
        super().__init__(root, split, _CLASS_SETS[classes], transform, mask_size_mismatch=mask_size_mismatch, exif=exif)

    def _find_samples(self) -> list[Sample]:
        split_dir = require_dir(self.root, "dataset.root") / self.split
        image_dir, mask_dir = split_dir / "images", split_dir / "masks"
        images = list_images(image_dir, what=f"SUIM {self.split} images", ignored=self.ignored_files)
        masks = list_images(mask_dir, what=f"SUIM {self.split} masks", ignored=self.ignored_files)
        return pair_samples(images, masks, image_dir, mask_dir)

    def _read_raw_mask(self, path: Path) -> np.ndarray:
        return read_image(path)  # colour-coded: always (H, W, 3) RGB

    def _mask_size(self, path: Path) -> tuple[int, int]:
        return image_size(path)  # read as an image: EXIF orientation applied

    def _decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        bits = (raw[..., :3] >= 128).astype(np.int64)
        code = bits[..., 0] * 4 + bits[..., 1] * 2 + bits[..., 2]
        return self._lut[code]
