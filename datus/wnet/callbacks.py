"""What a W-Net training shows while it runs: sample segmentations and loss curves, after every epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from datus.io import save_figure
from datus.wnet.data import ImageBank


def wnet_figure(images: np.ndarray, labels: np.ndarray, reconstructions: np.ndarray, stems: list[str], title: str):
    """Rows of image | the encoder's argmax over K (cluster colours) | the decoder's reconstruction."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from datus.masks import palette

    rows = len(images)
    height, width = images.shape[1:3]
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows * height / width + 0.6), squeeze=False)
    colors = palette(int(labels.max()) + 1)
    for row in range(rows):
        for ax, picture, name in zip(axes[row], (images[row], colors[labels[row]], reconstructions[row]),
                                     (stems[row], "segmentation (argmax over K)", "reconstruction")):
            ax.imshow(picture)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def loss_figure(history: list[dict[str, float]]):
    """The soft N-cut and the reconstruction error per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    epochs = [h["epoch"] + 1 for h in history]
    for ax, key, name in zip(axes, ("ncut", "reconstruction"), ("soft N-cut", "reconstruction (MSE)")):
        ax.plot(epochs, [h[key] for h in history], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class WNetPictures(pl.Callback):
    """After each epoch: ``epoch_NNN.png`` (``count`` images spread over ``bank``: consecutive video frames
    look alike) and ``loss_curves.png``."""

    def __init__(self, bank: ImageBank, folder: str | Path, count: int = 4) -> None:
        self.bank, self.folder, self.count = bank, Path(folder), min(int(count), len(bank))
        self.shown = np.linspace(0, len(bank) - 1, self.count).round().astype(int).tolist() if self.count else []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if pl_module.history:
            save_figure(self.folder / "loss_curves.png", loss_figure(pl_module.history))
        if not self.count:
            return
        model = pl_module.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            images = torch.stack([self.bank[i]["image"] for i in self.shown]).to(pl_module.device)
            probs, reconstruction = model(images)
        model.train(was_training)
        as_hwc = lambda x: x.permute(0, 2, 3, 1).clamp(0, 1).cpu().numpy()  # noqa: E731
        fig = wnet_figure(as_hwc(images), probs.argmax(dim=1).cpu().numpy(), as_hwc(reconstruction),
                          [self.bank.stems[i] for i in self.shown], f"W-Net after epoch {trainer.current_epoch + 1}")
        save_figure(self.folder / f"epoch_{trainer.current_epoch + 1:03d}.png", fig)
