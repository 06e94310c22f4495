"""Feature preview: run a backbone over a dataset and save what it sees, per image.

A real, small end-to-end job (dataset -> resize -> frozen backbone -> pictures + summary)
on Lightning's predict loop, so devices, DDP and the progress bar come from Lightning.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from datus.backbones import Backbone
from datus.io import save_figure, save_png, write_json
from datus.viz import feature_figure, pca_rgb

log = logging.getLogger(__name__)


def collate_images(items: list[dict]) -> dict[str, Any]:
    """Stack same-sized images into one batch; keep stems and original sizes as lists."""
    sizes = {tuple(item["image"].shape) for item in items}
    if len(sizes) > 1:
        raise ValueError(
            f"images of different sizes {sorted(sizes)} in one batch: use batch_size=1 or "
            "resize.mode=square"
        )
    return {
        "image": torch.stack([item["image"] for item in items]),
        "stem": [item["stem"] for item in items],
        "orig_size": [item.get("orig_size", tuple(item["image"].shape[-2:])) for item in items],
    }


class FeaturePreview(pl.LightningModule):
    """Predict step: backbone features of a batch -> PCA picture and CLS attention per image."""

    def __init__(self, backbone: Backbone, feature: str = "tokens") -> None:
        super().__init__()
        self.backbone = backbone
        self.feature = feature

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        start = time.perf_counter()
        out = self.backbone(self.backbone.normalize(batch["image"]))
        feats = out.features(self.feature).float().cpu()
        elapsed = (time.perf_counter() - start) / len(batch["stem"])
        results = []
        for i, stem in enumerate(batch["stem"]):
            attn = None
            if out.attentions is not None:
                a = out.attentions[i].float().cpu()
                a = a / a.amax(dim=-1, keepdim=True).clamp_min(1e-12)
                attn = a.reshape(-1, *out.grid).numpy()
            results.append({
                "stem": stem,
                "image": batch["image"][i].permute(1, 2, 0).cpu().numpy(),
                "pca": pca_rgb(feats[i], out.grid),
                "attentions": attn,
                "grid": out.grid,
                "seconds": elapsed,
            })
        return results


class PreviewWriter(BasePredictionWriter):
    """Writes ``<out>/features/<stem>.png`` (figure) and ``<out>/pca/<stem>.png`` per image."""

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.records: list[dict] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for r in prediction:
            save_png(self.out_dir / "pca" / f"{r['stem']}.png", r["pca"])
            fig = feature_figure(r["image"], r["pca"], r["attentions"], title=r["stem"])
            save_figure(self.out_dir / "features" / f"{r['stem']}.png", fig)
            self.records.append({"stem": r["stem"], "grid": list(r["grid"]), "seconds": r["seconds"]})


def run_preview(
    backbone: Backbone,
    dataset: torch.utils.data.Dataset,
    trainer: pl.Trainer,
    out_dir: str | Path,
    feature: str = "tokens",
    batch_size: int = 1,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Run the preview over ``dataset``; return (and write) ``out_dir/summary.json``."""
    out_dir = Path(out_dir)
    writer = PreviewWriter(out_dir)
    trainer.callbacks.append(writer)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images
    )
    start = time.perf_counter()
    trainer.predict(FeaturePreview(backbone, feature), dataloaders=loader, return_predictions=False)
    seconds = [r["seconds"] for r in writer.records]
    summary = {
        "backbone": backbone.name,
        "weights": getattr(backbone, "weights_source", None),
        "feature": feature,
        "images": len(writer.records),
        "backbone_ms_per_image": 1000 * float(np.mean(seconds)) if seconds else None,
        "total_seconds": time.perf_counter() - start,
        "pictures": str(out_dir / "features"),
        "per_image": writer.records,
    }
    write_json(out_dir / "summary.json", summary)
    return summary
