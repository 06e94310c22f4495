"""Lightning module that trains a :class:`~datus.backbones.ProjectionHead` with the correlation loss."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from datus.backbones.projected import ProjectionHead
from datus.projection.loss import CorrelationLoss

__all__ = ["ProjectionModule"]


class ProjectionModule(pl.LightningModule):
    """The head and its optimiser (Adam, constant ``lr``, as STEGO); logs each loss term per step.

    The loss compares the codes' correlations with those of the *centred* features (the head's
    ``center`` subtracted): raw DINOv2 keys share a bias that makes every pair correlate, and
    distilling that would collapse all codes onto one direction.
    """

    def __init__(self, head: ProjectionHead, loss: CorrelationLoss, lr: float = 5e-4) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"feature_head.lr={lr} must be > 0")
        self.head, self.loss, self.lr = head, loss, float(lr)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats, feats_knn = batch["feats"], batch["feats_knn"]
        center = self.head.center  # correlations of centred features: raw DINOv2 keys all correlate (key bias)
        terms = self.loss(feats - center, self.head(feats), feats_knn - center, self.head(feats_knn))
        self.log_dict({f"head/{name}": value for name, value in terms.items()}, prog_bar=False,
                      batch_size=feats.shape[0])
        self.log("loss", terms["loss"], prog_bar=True, logger=False, batch_size=feats.shape[0])
        return terms["loss"]

    def configure_optimizers(self):
        return torch.optim.Adam(self.head.parameters(), lr=self.lr)
