"""Images paired with pseudo masks for refinement; ground truth for validation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from datus.data import SegmentationDataset
from datus.data.io import image_size
from datus.masks import check_k, infer_k, largest_label, read_mask

log = logging.getLogger(__name__)


class PseudoMaskError(ValueError):
    """Pseudo masks that do not fit the images (missing, wrong size, not single-channel)."""


def read_label_png(path: Path) -> np.ndarray:
    try:
        return read_mask(path)
    except ValueError as err:
        raise PseudoMaskError(str(err)) from err


def pseudo_mask_folder(value: str | Path | None) -> Path:
    """The ``pseudo_masks=`` folder, refused (naming the setting) when unset or missing."""
    if value is None:
        raise PseudoMaskError("pass pseudo_masks=DIR (the pseudo_masks/ folder written by discover.py)")
    if not Path(value).is_dir():
        raise PseudoMaskError(f"pseudo_masks={value}: no such folder")
    return Path(value)


def check_pseudo_masks(dataset: SegmentationDataset, masks_dir: str | Path, k: int | None = None) -> int:
    """Read every pseudo mask of ``dataset`` once, before training; returns K (``k``, or the largest label + 1).

    Refuses, naming the files: a missing folder or mask, a mask whose size is not its image's,
    and labels that are neither below ``k`` nor 255 (unlabelled).
    """
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise PseudoMaskError(f"pseudo_masks={masks_dir}: no such folder")
    if k is not None:
        try:
            k = check_k(k, "k")
        except ValueError as err:
            raise PseudoMaskError(str(err)) from None
    missing, wrong_size, largest, too_large = [], [], [], []
    for sample in dataset.samples:
        path = masks_dir / f"{sample.stem}.png"
        if not path.is_file():
            missing.append(sample.stem)
            continue
        mask = read_label_png(path)
        height, width = image_size(sample.image)  # as the dataset reads it: EXIF orientation applied
        if mask.shape != (height, width):
            wrong_size.append(f"{path.name} is {mask.shape[1]}x{mask.shape[0]}, its image {width}x{height}")
        top = largest_label(mask)
        largest.append(top)
        if k is not None and top >= k:
            too_large.append(f"{path.name} (label {top})")
    if missing:
        raise PseudoMaskError(f"{len(missing)} of {len(dataset)} images of {dataset.name}/{dataset.split} have no pseudo "
                              f"mask in {masks_dir} (e.g. {', '.join(missing[:5])})")
    if wrong_size:
        raise PseudoMaskError(f"{len(wrong_size)} pseudo masks in {masks_dir} do not have their image's size: "
                              + "; ".join(wrong_size[:5]))
    if too_large:
        raise PseudoMaskError(f"k={k} but {len(too_large)} pseudo masks in {masks_dir} hold larger labels: "
                              f"{', '.join(too_large[:5])}; pass k=null to take K from the masks, or the k "
                              "discover.py used (k)")
    if k is None:
        k = infer_k(largest)
        log.info("k=null: K=%d, the largest label in the pseudo masks of %s + 1 (pass k= to set it)", k, masks_dir)
    return int(k)


class PairedMasks(Dataset):
    """``dataset``'s images with ``masks_dir/<stem>.png`` (pseudo masks) as targets.

    Every image must have its mask, of its size: checked at construction (names the files).
    """

    def __init__(self, dataset: SegmentationDataset, masks_dir: str | Path, transform=None) -> None:
        self.dataset, self.masks_dir, self.transform = dataset, Path(masks_dir), transform
        if not self.masks_dir.is_dir():
            raise PseudoMaskError(f"pseudo_masks={self.masks_dir}: no such folder")
        missing = [s.stem for s in dataset.samples if not (self.masks_dir / f"{s.stem}.png").is_file()]
        if missing:
            raise PseudoMaskError(
                f"{len(missing)} of {len(dataset)} images of {dataset.name}/{dataset.split} have no pseudo mask "
                f"in {self.masks_dir} (e.g. {', '.join(missing[:5])})"
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset.load(index)
        path = self.masks_dir / f"{item['stem']}.png"
        mask = read_label_png(path)
        if mask.shape != tuple(item["image"].shape[-2:]):
            raise PseudoMaskError(f"{path} is {mask.shape[::-1]} but its image is {tuple(item['image'].shape[-2:])[::-1]}")
        out = {"image": tv_tensors.Image(item["image"]), "mask": tv_tensors.Mask(torch.from_numpy(mask).long()),
               "stem": item["stem"]}
        return self.transform(out) if self.transform else out


class GroundTruth(Dataset):
    """``dataset``'s images and ground-truth masks (void 255), resized for the network."""

    def __init__(self, dataset: SegmentationDataset, transform=None) -> None:
        if not dataset.has_masks:
            raise PseudoMaskError(f"{dataset!r} has no ground truth for validation")
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset.load(index)
        out = {"image": tv_tensors.Image(item["image"]), "mask": tv_tensors.Mask(item["mask"]), "stem": item["stem"]}
        return self.transform(out) if self.transform else out


def train_transform(crop_size: int, scale: tuple[float, float] = (0.35, 1.0), jitter: float = 0.3) -> v2.Compose:
    """Random resized crop and flip applied to image and mask alike; colour jitter on the image only."""
    return v2.Compose([
        v2.RandomResizedCrop(crop_size, scale=tuple(scale), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(jitter / 3, 0.5)),
    ])


class _ResizeImageOnly:
    def __init__(self, short_side: int | None) -> None:
        self.resize = None if short_side is None else v2.Resize(short_side, antialias=True)

    def __call__(self, item: dict) -> dict:
        if self.resize is not None:
            item["image"] = self.resize(item["image"])
        return item


def _collate(items: list[dict]) -> dict[str, Any]:
    return {
        "image": torch.stack([torch.as_tensor(i["image"]) for i in items]),
        "mask": torch.stack([torch.as_tensor(i["mask"]) for i in items]),
        "stem": [i["stem"] for i in items],
    }


def validation_sampler(dataset: Dataset) -> torch.utils.data.Sampler | None:
    """Under DDP, each validation image on exactly one rank; None (Lightning's default) otherwise.

    Lightning's ``DistributedSampler`` pads a split to a multiple of the ranks by repeating images,
    and the confusion summed over the ranks would count those twice (3 images on 2 ranks: the first
    scored twice). The unrepeated sampler gives ranks unequal shares, which validation allows: its
    only collective is the metric's sync at the end of the epoch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)


class PseudoMaskDataModule(pl.LightningDataModule):
    """Train on ``train``'s pseudo masks; validate on ``val``'s ground truth (when it has any)."""

    def __init__(self, train: SegmentationDataset, pseudo_masks: str | Path, val: SegmentationDataset | None = None,
                 crop_size: int = 320, scale: tuple[float, float] = (0.35, 1.0), jitter: float = 0.3,
                 eval_short_side: int | None = 360, batch_size: int = 8, num_workers: int = 0) -> None:
        super().__init__()
        self.train_set = PairedMasks(train, pseudo_masks, train_transform(crop_size, scale, jitter))
        self.val_set = GroundTruth(val, _ResizeImageOnly(eval_short_side)) if val is not None and val.has_masks else None
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.classes = list(val.classes) if val is not None else []

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=len(self.train_set) > self.batch_size,
                          num_workers=self.num_workers, collate_fn=_collate,
                          # fresh workers each epoch, seeded from the main generator: exact resume
                          persistent_workers=False)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=1, num_workers=self.num_workers, collate_fn=_collate,
                          sampler=validation_sampler(self.val_set))
