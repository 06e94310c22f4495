"""Pseudo labels of a split from SAM's masks named by CLIP, one image at a time, resumable.

Each image's labels are written as ``labels/<stem>-<file fingerprint>.png`` (255 = unlabelled) with
``masks/<stem>-<fingerprint>.npz`` (each kept mask's predicted IoU, stability, area and class
probabilities) as soon as the image is done, so a killed run loses one image, a rerun skips what is
done, and an image replaced under the same name is labelled again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from datus.data import DatasetError, MaskError
from datus.io import atomic_write, write_npz
from datus.masks import read_mask, save_mask
from datus.openvocab.automatic import AutomaticMasks
from datus.openvocab.naming import ClipNamer
from datus.shards import file_fingerprint

log = logging.getLogger(__name__)

__all__ = ["label_split", "label_path"]


def label_path(folder: Path, stem: str, image: Path) -> Path:
    """Where the labels of ``image`` (named ``stem``) are kept in ``folder``: its fingerprint in the name."""
    return Path(folder) / "labels" / f"{stem}-{file_fingerprint(image)}.png"


def _images(dataset, todo: list[int], description: str, skipped: list[dict], *, resized: bool = False):
    """Yield ``(sample, image, item)`` for each index of ``todo``, with a progress bar: ``image`` the
    ``(H, W, 3)`` uint8 photo as stored (what SAM sees), ``item`` the dataset's item resized for the
    backbone when ``resized`` (from the same decoded image). An unreadable image goes to ``skipped``;
    a bad mask raises :class:`MaskError` (skipping its image would change what is evaluated)."""
    from rich.progress import track

    for i in track(todo, description=description, transient=True):
        sample = dataset.samples[i]
        try:
            raw = dataset.load(i)
            image = raw["image"].permute(1, 2, 0).numpy()
            item = dataset.transform(dict(raw)) if resized and dataset.transform is not None else raw
        except MaskError:
            raise  # a bad ground-truth mask stops the run now, not at evaluation after SAM has run
        except (DatasetError, OSError) as err:
            skipped.append({"index": i, "stem": sample.stem, "error": str(err)})
            log.warning("skipped %s: %s", sample.stem, err)
            continue
        yield sample, image, item


def label_split(dataset, folder: Path, generator: AutomaticMasks, namer: ClipNamer) -> dict[str, Any]:
    """Label every image of ``dataset`` not yet labelled in ``folder``; returns counts and skipped images."""
    folder = Path(folder)
    todo = [i for i, s in enumerate(dataset.samples) if not label_path(folder, s.stem, s.image).is_file()]
    if len(todo) < len(dataset):
        log.info("resuming: %d of %d images already labelled in %s", len(dataset) - len(todo), len(dataset), folder)
    skipped, masks_kept = [], 0
    for sample, image, _ in _images(dataset, todo, f"SAM + CLIP on {len(todo)} images", skipped):
        proposals = generator(image)
        labels, probs = namer(image, proposals)
        path = label_path(folder, sample.stem, sample.image)
        write_npz(folder / "masks" / f"{path.stem}.npz",
                  predicted_iou=np.array([p.predicted_iou for p in proposals], dtype=np.float32),
                  stability=np.array([p.stability for p in proposals], dtype=np.float32),
                  area=np.array([p.area for p in proposals], dtype=np.int64), probabilities=probs)
        save_mask(path, labels)  # last: its presence marks the image done
        masks_kept += len(proposals)
    return {"images": len(dataset), "labelled_this_run": len(todo) - len(skipped), "masks_kept_this_run": masks_kept,
            "skipped": skipped}


def read_labels(dataset, folder: Path):
    """Yield ``(stem, labels, (H, W))`` for every labelled image of ``dataset`` in ``folder``."""
    for sample in dataset.samples:
        path = label_path(folder, sample.stem, sample.image)
        if path.is_file():
            labels = read_mask(path)
            yield sample.stem, labels, labels.shape


def mask_features(proposals, patch_features: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(M, D)``: each mask's mean of the L2-normalised ``(h*w, D)`` patch features, weighted by how much
    of each patch the mask covers (SAM-only mode: what k-means clusters instead of CLIP's names)."""
    import torch
    import torch.nn.functional as F

    if not proposals:
        return np.zeros((0, patch_features.shape[1]), dtype=np.float32)
    masks = torch.from_numpy(np.stack([p.mask for p in proposals])).float()[:, None]
    cover = F.adaptive_avg_pool2d(masks, grid).flatten(1)  # (M, h*w): share of each patch under the mask
    feats = F.normalize(torch.from_numpy(np.asarray(patch_features, dtype=np.float32)), dim=1)
    weighted = cover @ feats / cover.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return F.normalize(weighted, dim=1).numpy()


def segment_split(dataset, folder: Path, generator: AutomaticMasks, backbone, feature: str) -> dict[str, Any]:
    """SAM-only mode: every image's kept masks (``owners/<stem>-<fp>.png``, index of the best mask per pixel,
    255 none) and their backbone features (``features/<stem>-<fp>.npy``), resumable like :func:`label_split`."""
    import torch

    from datus.openvocab.automatic import paint

    folder = Path(folder)
    done = lambda s: (folder / "owners" / label_path(folder, s.stem, s.image).name).is_file()  # noqa: E731
    todo = [i for i, s in enumerate(dataset.samples) if not done(s)]
    skipped: list[dict] = []
    for sample, image, item in _images(dataset, todo, f"SAM on {len(todo)} images", skipped, resized=True):
        proposals = generator(image)[:255]
        with torch.no_grad():
            out = backbone(backbone.normalize(item["image"][None]))
        feats = mask_features(proposals, out.features(feature)[0].cpu().numpy(), out.grid)
        name = label_path(folder, sample.stem, sample.image).name
        atomic_write(folder / "features" / f"{Path(name).stem}.npy", lambda f, x=feats: np.save(f, x))
        owners = paint(proposals, image.shape[:2])
        save_mask(folder / "owners" / name, np.where(owners < 0, 255, owners).astype(np.uint8))
    return {"images": len(dataset), "segmented_this_run": len(todo) - len(skipped), "skipped": skipped}


def cluster_split(dataset, folder: Path, kmeans):
    """SAM-only mode: k-means over every mask of the split; yields ``(stem, labels, (H, W))`` per image."""
    from datus.masks import UNLABELLED

    folder = Path(folder)
    names = [label_path(folder, s.stem, s.image).name for s in dataset.samples]
    present = [(s, n) for s, n in zip(dataset.samples, names) if (folder / "owners" / n).is_file()]
    feats = [np.load(folder / "features" / f"{Path(n).stem}.npy") for _, n in present]
    rows = np.concatenate(feats) if feats else np.zeros((0, 1), dtype=np.float32)
    if len(rows) < kmeans.k:
        raise ValueError(f"SAM kept {len(rows)} masks in the whole split, fewer than k={kmeans.k}: lower "
                         "method.sam.pred_iou_thresh / stability_thresh or k")
    kmeans.fit(rows.astype(np.float32))
    labels = kmeans.predict(rows.astype(np.float32))
    start = 0
    for (sample, name), f in zip(present, feats):
        owners = read_mask(folder / "owners" / name)
        lut = np.full(256, UNLABELLED, dtype=np.uint8)
        lut[:len(f)] = labels[start:start + len(f)]
        start += len(f)
        yield sample.stem, lut[owners], owners.shape
