"""Lightning module that trains a :class:`~datus.wnet.model.WNet` without labels, as the paper does.

Each step alternates the paper's two updates on one batch: the soft N-cut of the encoder's
memberships updates the encoder alone, then the reconstruction error of the whole W-Net
updates both U-Nets. Both losses are logged per step and averaged per epoch.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datus.wnet.model import WNet
from datus.wnet.ncut import SoftNCut

__all__ = ["WNetModule"]


class WNetModule(pl.LightningModule):
    """The W-Net, its soft N-cut, and one Adam optimiser per update (``lr``, constant)."""

    def __init__(self, model: WNet, ncut: SoftNCut, lr: float = 1e-3, ncut_weight: float = 1.0) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"wnet.lr={lr} must be > 0")
        self.model, self.ncut, self.lr, self.ncut_weight = model, ncut, float(lr), float(ncut_weight)
        self.automatic_optimization = False
        #: per epoch: mean soft N-cut and reconstruction loss (what the loss-curve picture draws)
        self.history: list[dict[str, float]] = []
        self._sums = {"ncut": 0.0, "reconstruction": 0.0, "batches": 0}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        encoder_opt, wnet_opt = self.optimizers()
        probs = self.model.segment(images)
        ncut = self.ncut(probs, images * 255.0)
        encoder_opt.zero_grad()
        self.manual_backward(self.ncut_weight * ncut)
        encoder_opt.step()
        _, reconstruction = self.model(images)
        rec = F.mse_loss(reconstruction, images)
        wnet_opt.zero_grad()
        self.manual_backward(rec)
        wnet_opt.step()
        size = images.shape[0]
        self.log_dict({"wnet/ncut": ncut.detach(), "wnet/reconstruction": rec.detach()}, prog_bar=True,
                      batch_size=size)
        self._sums["ncut"] += ncut.item() * size
        self._sums["reconstruction"] += rec.item() * size
        self._sums["batches"] += size
        if batch_idx == self.trainer.num_training_batches - 1:
            self._close_epoch()

    def _close_epoch(self) -> None:
        """The epoch's mean losses into :attr:`history`, at its last step: before the callbacks'
        epoch end (pictures, the checkpoint) read it."""
        seen = max(self._sums["batches"], 1)
        self.history.append({"epoch": self.current_epoch, "ncut": self._sums["ncut"] / seen,
                             "reconstruction": self._sums["reconstruction"] / seen})
        self._sums = {"ncut": 0.0, "reconstruction": 0.0, "batches": 0}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["wnet_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("wnet_history", []))

    def configure_optimizers(self):
        return (torch.optim.Adam(self.model.encoder.parameters(), lr=self.lr),
                torch.optim.Adam(self.model.parameters(), lr=self.lr))
