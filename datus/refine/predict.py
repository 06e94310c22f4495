"""Refined masks from a trained segmenter, in the same format as discover.py's pseudo masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from datus.data import SegmentationDataset
from datus.labeling.masks import palette, save_color_mask, save_legend, save_mask
from datus.metrics import ClusterConfusion


@torch.no_grad()
def predict_split(
    module,
    dataset: SegmentationDataset,
    out_dir: str | Path | None = None,
    short_side: int | None = 360,
    evaluate: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Predict every image of ``dataset`` at its original size; write PNGs to ``out_dir``.

    Writes ``out_dir/pseudo_masks/<stem>.png`` and ``pseudo_masks_color/`` as discover.py does
    (so a next round, or evaluate.py, reads them the same way). Returns the metrics against the
    split's ground truth when it has any and ``evaluate``.
    """
    module = module.to(device).eval()
    k = module.hparams.num_clusters
    colors = palette(k)
    resize = None if short_side is None else v2.Resize(short_side, antialias=True)
    metric = ClusterConfusion(k, list(dataset.classes)) if evaluate and dataset.has_masks else None
    for index in range(len(dataset)):
        item = dataset.load(index)
        image = item["image"]
        size = tuple(image.shape[-2:])
        x = (resize(image) if resize else image)[None].to(device)
        logits = module(x)
        pred = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)[0].cpu()
        if out_dir is not None:
            mask = pred.numpy().astype(np.uint8)
            save_mask(Path(out_dir) / "pseudo_masks" / f"{item['stem']}.png", mask)
            save_color_mask(Path(out_dir) / "pseudo_masks_color" / f"{item['stem']}.png", mask, colors)
        if metric is not None:
            metric.update(pred, item["mask"])
    if out_dir is not None:
        save_legend(Path(out_dir) / "pseudo_masks_color" / "legend.png", k, colors)
    return metric.compute() if metric is not None else {}
