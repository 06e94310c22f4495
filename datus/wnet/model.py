"""W-Net (Xia & Kulis 2017): a U-Net encoder to K-way soft segmentations, a U-Net decoder back to the image.

Each U-Net is a stack of modules (two 3x3 convolutions, each with ReLU and batch norm), down by
2x2 max-pooling, up by 2x2 transposed convolutions with skip connections; as in the paper, every
module but the first and last uses depthwise-separable convolutions. ``widths`` are the modules'
channels down the U (the paper: 64, 128, 256, 512, 1024); the total stride is ``2 ** (len(widths) - 1)``.
Inputs of any size are padded (edge pixels repeated) to a multiple of the stride and the
outputs cropped back, so an image smaller than the stride still works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "WNet"]


def _conv(in_ch: int, out_ch: int, separable: bool) -> nn.Module:
    if not separable:
        return nn.Conv2d(in_ch, out_ch, 3, padding=1)
    return nn.Sequential(nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch), nn.Conv2d(in_ch, out_ch, 1))


class _Module(nn.Sequential):
    """Two 3x3 convolutions (separable or not), each followed by ReLU and batch norm; then dropout."""

    def __init__(self, in_ch: int, out_ch: int, separable: bool, dropout: float) -> None:
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [_conv(in_ch if i == 0 else out_ch, out_ch, separable), nn.ReLU(inplace=True),
                       nn.BatchNorm2d(out_ch)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """``(B, in_channels, H, W) -> (B, out_channels, H, W)`` with H, W multiples of :attr:`stride`."""

    def __init__(self, *, in_channels: int, out_channels: int, widths: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"wnet.widths={widths}: need at least two positive widths (one down, one up)")
        last = len(widths) - 1
        self.down = nn.ModuleList(_Module(in_channels if i == 0 else widths[i - 1], w, separable=i > 0,
                                          dropout=dropout) for i, w in enumerate(widths))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(last)))
        self.merge = nn.ModuleList(_Module(2 * widths[i], widths[i], separable=i > 0, dropout=dropout)
                                   for i in reversed(range(last)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.stride = 2**last

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


class WNet(nn.Module):
    """The encoder's ``k``-way soft segmentation and the decoder's reconstruction of the image.

    ``segment(images)`` gives ``(B, k, H, W)`` memberships (softmax), ``forward`` also the
    ``(B, 3, H, W)`` reconstruction. Images are ``(B, 3, H, W)`` floats in [0, 1]; a one-channel
    (grayscale) batch is repeated to RGB.
    """

    def __init__(self, *, k: int, widths: Sequence[int] = (64, 128, 256, 512, 1024), dropout: float = 0.0) -> None:
        super().__init__()
        if int(k) < 2:
            raise ValueError(f"k={k}: a W-Net needs at least 2 classes")
        self.k, self.widths, self.dropout = int(k), [int(w) for w in widths], float(dropout)
        self.encoder = UNet(in_channels=3, out_channels=self.k, widths=self.widths, dropout=self.dropout)
        self.decoder = UNet(in_channels=self.k, out_channels=3, widths=self.widths, dropout=self.dropout)
        self.stride = self.encoder.stride

    def _pad(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"W-Net needs (B, 3, H, W) RGB (or (B, 1, H, W) grayscale) images, got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        return images, (height, width)

    def segment_logits(self, images: Tensor) -> Tensor:
        """``(B, k, H, W)`` encoder scores (before the softmax)."""
        padded, (height, width) = self._pad(images)
        return self.encoder(padded)[..., :height, :width]

    def segment(self, images: Tensor) -> Tensor:
        """``(B, k, H, W)`` soft segmentation (memberships summing to 1 over k)."""
        return self.segment_logits(images).softmax(dim=1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(memberships, reconstruction)``; the decoder reads the padded memberships."""
        padded, (height, width) = self._pad(images)
        probs = self.encoder(padded).softmax(dim=1)
        return probs[..., :height, :width], self.decoder(probs)[..., :height, :width]
