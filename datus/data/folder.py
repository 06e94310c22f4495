"""Any folder of images, optionally with class-index masks (config name ``folder``).

Layout: ``root/<split>/images/*`` and, optionally, ``root/<split>/true_masks/*.png``
(single-channel, one class id per pixel, same stems as the images). Without
a ``true_masks`` folder the split is unlabelled: items have no ``"mask"``.
Masks are user files, so every one is checked when the dataset is built: an
unpaired file, a wrong-size mask or an unknown label fails before any work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datus.data.base import SegmentationDataset, Transform
from datus.data.errors import DatasetError
from datus.data.files import list_images, pair_samples, require_dir
from datus.data.io import DEFAULT_MAX_PIXELS, to_index_map
from datus.data.sample import Sample

__all__ = ["ImageFolder"]


def _class_names(num_classes: int | None, class_names: Sequence[str] | None) -> tuple[str, ...]:
    """Resolve the class names from the two settings, checking they agree."""
    if class_names is not None:
        names = tuple(str(c) for c in class_names)
        if num_classes is not None and len(names) != num_classes:
            raise DatasetError(
                f"dataset.class_names has {len(names)} names but dataset.num_classes={num_classes}; make them agree"
            )
        num_classes = len(names)
    if num_classes is None:
        return ()
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 1 <= num_classes <= 255:
        raise DatasetError(
            f"dataset.num_classes={num_classes!r} must be an integer in 1..255 (255 is reserved for void)"
        )
    return tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(num_classes))


class ImageFolder(SegmentationDataset):
    """Your own images; masks optional. ``ignore_index`` is the void value *in the files* (mapped to 255).

    ``max_pixels``: larger images are refused from their header (skipped and named by discover.py).
    """

    name = "folder"
    checks_every_mask = True
    label_settings = "dataset.num_classes and dataset.ignore_index"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        num_classes: int | None = None,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        transform: Transform | None = None,
        mask_size_mismatch: str = "error",
        exif: str = "error",
    ) -> None:
        if not isinstance(ignore_index, int) or not 0 <= ignore_index <= 65535:
            raise DatasetError(f"dataset.ignore_index={ignore_index!r} must be a non-negative integer")
        self.file_ignore_index = ignore_index
        super().__init__(root, split, _class_names(num_classes, class_names), transform, max_pixels,
                         mask_size_mismatch, exif)
        if self.has_masks and self.num_classes == 0:
            raise DatasetError(
                f"{self.root / self.split / 'true_masks'} holds masks, so set dataset.num_classes "
                "(number of classes, void not counted)"
            )
        if self.has_masks:
            self.check_masks()

    def _find_samples(self) -> list[Sample]:
        split_dir = require_dir(self.root, "dataset.root") / self.split
        image_dir, mask_dir = split_dir / "images", split_dir / "true_masks"
        images = list_images(image_dir, what=f"{self.split} images", ignored=self.ignored_files)
        if not mask_dir.exists():
            return [Sample(image=path, mask=None, stem=stem) for stem, path in images.items()]
        masks = list_images(mask_dir, what=f"{self.split} masks", ignored=self.ignored_files)
        return pair_samples(images, masks, image_dir, mask_dir)

    def _decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        raw = to_index_map(raw, path)
        mask = raw.astype(np.int64)
        if self.file_ignore_index != 255 and self.num_classes <= 255 and (raw == 255).any():
            raise DatasetError(
                f"mask {path} has label value 255, which is not a class (0..{self.num_classes - 1}) and "
                f"not the void value dataset.ignore_index={self.file_ignore_index}"
            )
        mask[raw == self.file_ignore_index] = 255
        return mask
