"""The refinement LightningModule: cross-entropy on pseudo masks, Hungarian mIoU on ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from datus.io import plain
from datus.masks import UNLABELLED
from datus.metrics import ClusterConfusion
from datus.refine.data import PseudoMaskDataModule
from datus.refine.model import build_segmenter
from datus.refine.optim import configure_optimizers, finish_validation


class RefineModule(pl.LightningModule):
    """DeepLabV3 trained on K-cluster pseudo masks (255 ignored), validated with the honest metric.

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``) taking the
    parameters / the optimiser. Validation logs ``val/miou`` and ``val/pixel_accuracy`` from the
    dataset-level cluster confusion (clusters matched to classes by the Hungarian algorithm).
    """

    def __init__(self, arch: str, num_clusters: int, class_names: list[str] | None = None,
                 optimizer=None, scheduler=None, backbone_weights: str | None = None, data: dict | None = None,
                 picture_dir: str | None = None, num_pictures: int = 4) -> None:
        super().__init__()
        # plain types only, so checkpoints load with weights_only=True
        self.save_hyperparameters({
            "arch": str(arch), "num_clusters": int(num_clusters), "data": plain(data or {}),
            "class_names": [str(c) for c in (class_names or [])],
            "backbone_weights": None if backbone_weights is None else str(backbone_weights),
            "picture_dir": None if picture_dir is None else str(picture_dir), "num_pictures": int(num_pictures),
        })
        self.model = build_segmenter(arch, num_clusters, backbone_weights)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names = list(class_names or [])
        self.val_metric = ClusterConfusion(num_clusters, self.class_names) if self.class_names else None
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.picture_dir, self.num_pictures = picture_dir, num_pictures
        self._pictures: list[dict[str, np.ndarray]] = []

    def make_datamodule(self, train, pseudo_masks, val=None, cache=None) -> PseudoMaskDataModule:
        """Images of ``train`` with their pseudo masks, ``val``'s ground truth (``model.data`` settings)."""
        return PseudoMaskDataModule(train, pseudo_masks, val, **self.hparams.data)

    def logits_source(self, dataset, cache=None):
        """``index -> (K, h, w)`` logits of that image of ``dataset``, fed at the training's eval short side."""
        short_side = self.hparams.data.get("eval_short_side", 360)
        resize = None if short_side is None else v2.Resize(short_side, antialias=True)

        def logits(index: int) -> torch.Tensor:
            image = dataset.load(index)["image"]
            return self((resize(image) if resize else image)[None].to(self.device))[0]

        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` for uint8 or [0, 1] RGB images."""
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return self.model((x - self.mean) / self.std)["out"]

    @torch.no_grad()
    def predict_masks(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Cluster id per pixel, at ``size`` (logits upsampled bilinearly, then argmax)."""
        logits = self(images)
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over labelled pixels only (255 ignored); 0 for a fully unlabelled batch."""
        if not (masks != UNLABELLED).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, masks, ignore_index=UNLABELLED)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.val_metric is None:
            return
        pred = self.predict_masks(batch["image"], size=tuple(batch["mask"].shape[-2:]))
        self.val_metric.update(pred, batch["mask"])
        if len(self._pictures) < self.num_pictures:
            self._pictures.append({"stem": batch["stem"][0], "image": batch["image"][0].permute(1, 2, 0).cpu().numpy(),
                                   "truth": batch["mask"][0].cpu().numpy(), "pred": pred[0].cpu().numpy().astype(np.uint8)})

    def on_validation_epoch_end(self) -> None:
        if self.val_metric is not None:
            finish_validation(self, [dict(p, image=_resize_like(p["image"], p["truth"].shape)) for p in self._pictures])
        self._pictures = []

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory)


def _resize_like(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
