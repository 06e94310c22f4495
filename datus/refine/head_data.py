"""Cached feature maps paired with pseudo masks (training) or ground truth (validation).

Augmentations act on the cached ``(D, h, w)`` map and its mask together: a horizontal flip,
and a random crop on the patch grid whose mask crop covers exactly the same pixels of the
original image. Masks stay at their original resolution (the loss upsamples the logits).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datus.features import FeatureIndex
from datus.refine.data import validation_sampler


def pixel_span(start: int, stop: int, cells: int, pixels: int) -> tuple[int, int]:
    """The pixels ``[a, b)`` of an axis of ``pixels`` covered by patch cells ``[start, stop)`` of ``cells``."""
    return round(start * pixels / cells), round(stop * pixels / cells)


class FeatureMasks(Dataset):
    """Item ``j``: the cached map of dataset index ``indices[j]`` and ``mask_of(index)`` (``(H, W)`` uint8).

    ``train=True`` flips (p = 0.5) and crops a random window of ``scale`` (fraction of each
    side, uniform) of the grid; otherwise items are whole.
    """

    def __init__(self, features: FeatureIndex, indices: Sequence[int], mask_of: Callable[[int], np.ndarray],
                 train: bool = False, scale: tuple[float, float] = (0.5, 1.0), flip: bool = True) -> None:
        missing = [i for i in indices if i not in features]
        if missing:
            raise ValueError(f"{len(missing)} images have no cached features (e.g. indices {missing[:5]})")
        self.features, self.indices, self.mask_of = features, list(indices), mask_of
        self.train, self.scale, self.flip = train, (float(scale[0]), float(scale[1])), flip
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"model.data.scale={list(scale)}: need 0 < min <= max <= 1")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        index = self.indices[j]
        fmap = torch.from_numpy(np.array(self.features[index], dtype=np.float32))
        mask = torch.from_numpy(np.asarray(self.mask_of(index))).long()
        if self.train:
            (_, h, w), (height, width) = fmap.shape, mask.shape
            side = random.uniform(*self.scale)
            ch, cw = max(1, round(h * side)), max(1, round(w * side))
            top, left = random.randint(0, h - ch), random.randint(0, w - cw)
            y0, y1 = pixel_span(top, top + ch, h, height)
            x0, x1 = pixel_span(left, left + cw, w, width)
            fmap, mask = fmap[:, top : top + ch, left : left + cw], mask[y0:y1, x0:x1]
            if self.flip and random.random() < 0.5:
                fmap, mask = fmap.flip(-1), mask.flip(-1)
        return {"features": fmap, "mask": mask, "index": index, "stem": self.features.stem(index)}


def collate_maps(items: list[dict]) -> dict[str, Any]:
    """Maps padded with zeros to the batch's largest grid (``grids`` says each one's size); masks as a list."""
    dim = items[0]["features"].shape[0]
    h = max(i["features"].shape[1] for i in items)
    w = max(i["features"].shape[2] for i in items)
    maps = torch.zeros(len(items), dim, h, w)
    for n, item in enumerate(items):
        maps[n, :, : item["features"].shape[1], : item["features"].shape[2]] = item["features"]
    return {
        "features": maps,
        "grids": [tuple(i["features"].shape[1:]) for i in items],
        "masks": [i["mask"] for i in items],
        "indices": [i["index"] for i in items],
        "stems": [i["stem"] for i in items],
    }


class FeatureMaskDataModule(pl.LightningDataModule):
    """Train on cached maps + pseudo masks, validate on cached maps + ground truth (when given)."""

    def __init__(self, train: FeatureMasks, val: FeatureMasks | None = None, batch_size: int = 8,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train_set) > self.batch_size, num_workers=self.num_workers,
                          collate_fn=collate_maps, persistent_workers=False)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=collate_maps, sampler=validation_sampler(self.val_set))
