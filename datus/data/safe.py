"""Keep a long run alive through bad image files: unreadable items become named, skipped records."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from datus.data.errors import DatasetError, MaskError
from datus.data.io import image_size


class SkipUnreadable(Dataset):
    """Wrap a dataset so an image that cannot be read returns ``{"stem", "index", "error"}``.

    Images smaller than ``min_size`` pixels on a side (less than one patch) are skipped the
    same way; every ``error`` names the file and the reason. A bad *mask* (:class:`MaskError`)
    still raises: skipping its image would silently change what is evaluated. Everything
    else (including bugs) raises too.
    """

    def __init__(self, dataset: Dataset, min_size: int = 1) -> None:
        self.dataset = dataset
        self.min_size = int(min_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def _file(self, index: int, stem: str) -> str:
        """The image's file path when the dataset lists its samples, else its stem."""
        samples = getattr(self.dataset, "samples", None)
        return str(samples[index].image) if samples is not None else stem

    def _refused(self, index: int) -> dict[str, Any] | None:
        """Decide from the image file's header, before decoding or resizing: smaller than one patch,
        or refused by the dataset's transform (e.g. :meth:`datus.transforms.ResizeForBackbone.refuse`)."""
        samples = getattr(self.dataset, "samples", None)
        if samples is None:
            return None
        sample = samples[index]
        try:
            height, width = image_size(sample.image)
        except DatasetError as err:
            return {"stem": sample.stem, "index": int(index), "error": str(err)}
        if min(height, width) < self.min_size:
            return {"stem": sample.stem, "index": int(index), "error": f"image {sample.image} is {width}x{height}, "
                    f"smaller than one patch ({self.min_size} px): nothing to decompose"}
        refuse = getattr(getattr(self.dataset, "transform", None), "refuse", None)
        reason = refuse(height, width) if refuse is not None else None
        if reason is None:
            return None
        return {"stem": sample.stem, "index": int(index), "error": f"image {sample.image}: {reason}"}

    def __getitem__(self, index: int) -> dict[str, Any]:
        refused = self._refused(index)
        if refused is not None:
            return refused
        try:
            item = self.dataset[index]
        except MaskError:
            raise
        except DatasetError as err:
            sample = self.dataset.samples[index]
            return {"stem": sample.stem, "index": int(index), "error": str(err)}
        height, width = item.get("orig_size", tuple(item["image"].shape[-2:]))
        if min(height, width) < self.min_size:
            return {
                "stem": item["stem"],
                "index": int(index),
                "error": f"image {self._file(index, item['stem'])} is {width}x{height}, smaller than one patch "
                f"({self.min_size} px): nothing to decompose",
            }
        return item
