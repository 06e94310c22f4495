"""Keep a long run alive through bad files: unreadable items become named, skipped records."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from datus.data.errors import DatasetError


class SkipUnreadable(Dataset):
    """Wrap a dataset so an item that cannot be read returns ``{"stem", "index", "error"}``.

    Images smaller than ``min_size`` pixels on a side (less than one patch) are skipped the
    same way, with the reason. Everything else (including bugs) still raises.
    """

    def __init__(self, dataset: Dataset, min_size: int = 1) -> None:
        self.dataset = dataset
        self.min_size = int(min_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            item = self.dataset[index]
        except DatasetError as err:
            sample = self.dataset.samples[index]
            return {"stem": sample.stem, "index": int(index), "error": str(err)}
        height, width = item.get("orig_size", tuple(item["image"].shape[-2:]))
        if min(height, width) < self.min_size:
            return {
                "stem": item["stem"],
                "index": int(index),
                "error": f"image {width}x{height} is smaller than one patch ({self.min_size} px)",
            }
        return item
