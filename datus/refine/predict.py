"""Refined masks from a trained model, in discover.py's format, optionally through the dense CRF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import track

from datus.data import SegmentationDataset
from datus.labeling.masks import palette, save_color_mask, save_legend, save_mask
from datus.metrics import ClusterConfusion
from datus.postprocess import DenseCRF, labels_from_scores


@torch.no_grad()
def write_predictions(
    logits_of: Callable[[int], torch.Tensor],
    dataset: SegmentationDataset,
    num_clusters: int,
    out_dir: str | Path | None = None,
    crf: DenseCRF | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Label every image of ``dataset`` at its original size from ``logits_of(index)`` (``(K, h, w)``).

    Logits are upsampled bilinearly (or sharpened by ``crf`` with the image); writes
    ``out_dir/pseudo_masks/<stem>.png`` and ``pseudo_masks_color/`` as discover.py does (so a
    next round, or evaluate.py, reads them the same way). Returns the metrics against the
    split's ground truth when it has any and ``evaluate``.
    """
    colors = palette(num_clusters)
    metric = ClusterConfusion(num_clusters, list(dataset.classes)) if evaluate and dataset.has_masks else None
    for index in track(range(len(dataset)), description=f"predicting {dataset.split}", transient=True):
        item = dataset.load(index)
        size = tuple(item["image"].shape[-2:])
        image = item["image"].permute(1, 2, 0).numpy() if crf is not None else None
        mask = labels_from_scores(logits_of(index).float().cpu(), size, image, crf)
        if out_dir is not None:
            save_mask(Path(out_dir) / "pseudo_masks" / f"{item['stem']}.png", mask)
            save_color_mask(Path(out_dir) / "pseudo_masks_color" / f"{item['stem']}.png", mask, colors)
        if metric is not None:
            metric.update(torch.from_numpy(mask).long(), item["mask"])
    if out_dir is not None:
        save_legend(Path(out_dir) / "pseudo_masks_color" / "legend.png", num_clusters, colors)
    return metric.compute() if metric is not None else {}


def predict_split(module, dataset: SegmentationDataset, out_dir: str | Path | None = None, *, cache=None,
                  crf: DenseCRF | None = None, evaluate: bool = True, device: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`write_predictions` of a trained refinement module (``RefineModule`` or ``HeadModule``)."""
    module = module.to(device).eval()
    return write_predictions(module.logits_source(dataset, cache), dataset, int(module.hparams.num_clusters),
                             out_dir, crf, evaluate)
