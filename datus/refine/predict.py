"""Refined masks from a trained model, in discover.py's format, optionally through the dense CRF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track

from datus.data import SegmentationDataset
from datus.features import warn_without_maps
from datus.masks import UNLABELLED, save_masks
from datus.metrics import ClusterConfusion
from datus.postprocess import DenseCRF, labels_from_scores


@torch.no_grad()
def write_predictions(
    logits_of: Callable[[int], torch.Tensor | None],
    dataset: SegmentationDataset,
    num_clusters: int,
    out_dir: str | Path | None = None,
    crf: DenseCRF | None = None,
    evaluate: bool = True,
    matching: str = "hungarian",
) -> dict[str, Any]:
    """Label every image of ``dataset`` at its original size from ``logits_of(index)`` (``(K, h, w)``;
    None when the image has no prediction: its mask is unlabelled, so it counts as wrong, never skipped).

    Logits are upsampled bilinearly (or sharpened by ``crf`` with the image); writes
    ``out_dir/pseudo_masks/<stem>.png`` and ``pseudo_masks_color/`` as discover.py does (so a
    next round, or evaluate.py, reads them the same way). Returns the metrics against the
    split's ground truth when it has any and ``evaluate``.
    """
    metric = ClusterConfusion(num_clusters, list(dataset.classes), matching=matching) \
        if evaluate and dataset.has_masks else None

    unscored: list[int] = []

    def masks():
        for index in track(range(len(dataset)), description=f"predicting {dataset.split}", transient=True):
            item = dataset.load(index)
            size = tuple(item["image"].shape[-2:])
            image = item["image"].permute(1, 2, 0).numpy() if crf is not None else None
            logits = logits_of(index)
            if logits is None:  # no feature map: an unlabelled mask, scored as wrong wherever labelled
                unscored.append(index)
                mask = np.full(size, UNLABELLED, dtype=np.uint8)
            else:
                mask = labels_from_scores(logits.float().cpu(), size, image, crf)
            if metric is not None:
                metric.update(torch.from_numpy(mask).long(), item["mask"])
            yield item["stem"], mask, size

    if out_dir is None:
        for _ in masks():
            pass
    else:
        save_masks(Path(out_dir), masks(), num_clusters)
    warn_without_maps(dataset, unscored, "their masks are unlabelled, so every labelled pixel of theirs counts as wrong")
    return metric.compute() if metric is not None else {}


def predict_split(module, dataset: SegmentationDataset, out_dir: str | Path | None = None, *, cache=None,
                  crf: DenseCRF | None = None, evaluate: bool = True, device: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`write_predictions` of a trained refinement module (``RefineModule`` or ``HeadModule``)."""
    module = module.to(device).eval()
    return write_predictions(module.logits_source(dataset, cache), dataset, int(module.hparams.num_clusters),
                             out_dir, crf, evaluate, matching=module.hparams.get("matching", "hungarian"))
