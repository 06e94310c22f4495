"""Resizing images for a backbone: sizes that are multiples of the patch size, RGB kept."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F


class ResizeForBackbone:
    """Resize a dataset item's ``image`` so both sides are multiples of ``patch_size``.

    ``mode="square"``: the DatUS² paper's fixed ``size x size`` squash (``size`` must be a
    multiple of the patch size). ``mode="short_side"``: keep the aspect ratio, short side
    ``size``, each side rounded to the nearest multiple of the patch size. The original size
    is kept in ``item["orig_size"]`` (H, W); masks are never resized here (metrics are computed
    at the original resolution). Images stay uint8 RGB; normalisation belongs to the backbone.
    """

    def __init__(self, size: int, patch_size: int, mode: str = "short_side") -> None:
        if mode not in ("square", "short_side"):
            raise ValueError(f"resize.mode={mode!r}: choose 'square' or 'short_side'")
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < patch_size:
            raise ValueError(f"resize.size={size!r} must be a whole number of pixels >= the patch size {patch_size}")
        if mode == "square" and size % patch_size:
            raise ValueError(
                f"resize.size={size} (resize.mode=square) is not a multiple of the patch size {patch_size}; "
                f"use {size // patch_size * patch_size} or {(size // patch_size + 1) * patch_size}"
            )
        self.size, self.patch_size, self.mode = int(size), int(patch_size), mode

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Output (H, W) for an input of ``height x width``."""
        if self.mode == "square":
            return self.size, self.size
        scale = self.size / min(height, width)
        p = self.patch_size
        return (max(p, round(height * scale / p) * p), max(p, round(width * scale / p) * p))

    def __call__(self, item: dict) -> dict:
        image = item["image"]
        height, width = image.shape[-2:]
        item["orig_size"] = (int(height), int(width))
        target = self.target_size(height, width)
        if target != (height, width):
            resized = F.interpolate(
                image[None].float(), size=target, mode="bilinear", align_corners=False, antialias=True
            )
            image = resized[0].round().clamp(0, 255).to(torch.uint8)
        item["image"] = image
        return item

    def __repr__(self) -> str:
        return f"ResizeForBackbone(size={self.size}, patch_size={self.patch_size}, mode={self.mode!r})"
