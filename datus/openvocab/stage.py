"""Pseudo labels of a split from SAM's masks named by CLIP, one image at a time, resumable.

Each image's labels are written as ``labels/<stem>-<file fingerprint>.png`` (255 = unlabelled) with
``masks/<stem>-<fingerprint>.npz`` (each kept mask's predicted IoU, stability, area and class
probabilities) as soon as the image is done, so a killed run loses one image, a rerun skips what is
done, and an image replaced under the same name is labelled again.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from datus.data import DatasetError
from datus.io import atomic_write
from datus.masks import read_mask, save_mask
from datus.openvocab.automatic import AutomaticMasks
from datus.openvocab.naming import ClipNamer
from datus.shards import file_fingerprint

log = logging.getLogger(__name__)

__all__ = ["label_split", "label_path"]


def label_path(folder: Path, stem: str, image: Path) -> Path:
    """Where the labels of ``image`` (named ``stem``) are kept in ``folder``: its fingerprint in the name."""
    return Path(folder) / "labels" / f"{stem}-{file_fingerprint(image)}.png"


def label_split(dataset, folder: Path, generator: AutomaticMasks, namer: ClipNamer) -> dict[str, Any]:
    """Label every image of ``dataset`` not yet labelled in ``folder``; returns counts and skipped images."""
    from rich.progress import track

    folder = Path(folder)
    todo = [i for i, s in enumerate(dataset.samples) if not label_path(folder, s.stem, s.image).is_file()]
    if len(todo) < len(dataset):
        log.info("resuming: %d of %d images already labelled in %s", len(dataset) - len(todo), len(dataset), folder)
    skipped, masks_kept = [], 0
    for i in track(todo, description=f"SAM + CLIP on {len(todo)} images", transient=True):
        sample = dataset.samples[i]
        try:
            image = dataset.load(i)["image"].permute(1, 2, 0).numpy()
        except (DatasetError, OSError) as err:
            skipped.append({"index": i, "stem": sample.stem, "error": str(err)})
            log.warning("skipped %s: %s", sample.stem, err)
            continue
        proposals = generator(image)
        labels, probs = namer(image, proposals)
        path = label_path(folder, sample.stem, sample.image)
        buffer = io.BytesIO()
        np.savez(buffer, predicted_iou=np.array([p.predicted_iou for p in proposals], dtype=np.float32),
                 stability=np.array([p.stability for p in proposals], dtype=np.float32),
                 area=np.array([p.area for p in proposals], dtype=np.int64), probabilities=probs)
        atomic_write(folder / "masks" / f"{path.stem}.npz", lambda f, b=buffer: f.write(b.getvalue()))
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
