"""W-Net's soft normalized cut (Xia & Kulis 2017), on local windows: never a dense (HW)^2 matrix.

``J = K - sum_k assoc(A_k, A_k) / assoc(A_k, V)`` with soft memberships ``p_uk`` and pixel
affinities ``w_uv = exp(-|F_u - F_v|^2 / sigma_i^2) * exp(-|X_u - X_v|^2 / sigma_x^2)`` for pixels
closer than ``radius`` (0 beyond). Only the offsets inside the radius are visited, one shifted
view at a time, so memory is ``O(B K H W)`` whatever the radius: the dense matrix of one
224x288 image would take about 17 GB.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SoftNCut", "window_offsets"]


def window_offsets(radius: float) -> list[tuple[int, int]]:
    """Every ``(dy, dx)`` with ``dy^2 + dx^2 < radius^2`` (the pixel itself included)."""
    r = int(torch.tensor(float(radius)).ceil())
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx < radius * radius]


class SoftNCut(nn.Module):
    """``loss(probs, image)``: mean soft N-cut of ``(B, K, H, W)`` memberships (softmax over K)
    against ``(B, C, H, W)`` pixel features (RGB in 0..255 for the paper's ``sigma_i = 10``).

    The paper's defaults: ``radius`` 5, ``sigma_i`` 10 (intensity), ``sigma_x`` 4 (position).
    The loss lies in ``[0, K - 1]``; a segmentation that follows the image's edges scores lower.
    """

    def __init__(self, *, radius: float = 5.0, sigma_i: float = 10.0, sigma_x: float = 4.0) -> None:
        super().__init__()
        for name, value in (("radius", radius), ("sigma_i", sigma_i), ("sigma_x", sigma_x)):
            if not float(value) > 0:
                raise ValueError(f"ncut.{name}={value} must be > 0")
        self.radius, self.sigma_i, self.sigma_x = float(radius), float(sigma_i), float(sigma_x)
        self.offsets = window_offsets(self.radius)

    def _padded(self, x: Tensor) -> Tensor:
        r = int(max(max(abs(dy), abs(dx)) for dy, dx in self.offsets))
        return torch.nn.functional.pad(x, (r, r, r, r)), r

    def weights(self, image: Tensor) -> list[tuple[tuple[int, int], Tensor]]:
        """``(offset, (B, 1, H, W) affinity of each pixel to its neighbour at that offset)``, 0 where
        the neighbour falls outside the image."""
        height, width = image.shape[-2:]
        inside, r = self._padded(torch.ones_like(image[:, :1]))
        padded, _ = self._padded(image)
        out = []
        for dy, dx in self.offsets:
            window = (slice(None), slice(None), slice(r + dy, r + dy + height), slice(r + dx, r + dx + width))
            diff = (image - padded[window]).pow(2).sum(dim=1, keepdim=True)
            spatial = (dy * dy + dx * dx) / self.sigma_x**2
            out.append(((dy, dx), torch.exp(-diff / self.sigma_i**2 - spatial) * inside[window]))
        return out

    def forward(self, probs: Tensor, image: Tensor) -> Tensor:
        if probs.ndim != 4 or image.ndim != 4 or probs.shape[0] != image.shape[0] or probs.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"soft N-cut needs (B, K, H, W) memberships and (B, C, H, W) features of the same "
                             f"batch and size, got {tuple(probs.shape)} and {tuple(image.shape)}")
        height, width = probs.shape[-2:]
        with torch.no_grad():
            weights = self.weights(image.to(probs.dtype))
        padded, r = self._padded(probs)
        # neighbours[u, k] = sum_v w_uv p_vk and degree[u] = sum_v w_uv, one offset at a time
        neighbours, degree = 0, 0
        for (dy, dx), w in weights:
            neighbours = neighbours + w * padded[:, :, r + dy:r + dy + height, r + dx:r + dx + width]
            degree = degree + w
        assoc = (probs * neighbours).sum(dim=(2, 3))  # (B, K): sum_uv w_uv p_uk p_vk
        volume = (probs * degree).sum(dim=(2, 3))  # (B, K): sum_u p_uk d_u
        ratio = assoc / volume.clamp_min(torch.finfo(probs.dtype).tiny)
        return (probs.shape[1] - ratio.sum(dim=1)).mean()
