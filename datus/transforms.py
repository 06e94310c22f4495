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

    def __init__(self, size: int, patch_size: int, mode: str = "short_side", max_patches: int | None = 8192,
                 max_aspect_ratio: float | None = 8.0) -> None:
        if mode not in ("square", "short_side"):
            raise ValueError(f"resize.mode={mode!r}: choose 'square' or 'short_side'")
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < patch_size:
            raise ValueError(f"resize.size={size!r} must be a whole number of pixels >= the patch size {patch_size}")
        if mode == "square" and size % patch_size:
            raise ValueError(
                f"resize.size={size} (resize.mode=square) is not a multiple of the patch size {patch_size}; "
                f"use {size // patch_size * patch_size} or {(size // patch_size + 1) * patch_size}"
            )
        if max_patches is not None and (isinstance(max_patches, bool) or int(max_patches) < 1):
            raise ValueError(f"resize.max_patches={max_patches!r} must be a whole number >= 1 (or null: no limit)")
        if max_aspect_ratio is not None and float(max_aspect_ratio) < 1:
            raise ValueError(f"resize.max_aspect_ratio={max_aspect_ratio!r} must be >= 1 (or null: no limit)")
        self.size, self.patch_size, self.mode = int(size), int(patch_size), mode
        self.max_patches = None if max_patches is None else int(max_patches)
        self.max_aspect_ratio = None if max_aspect_ratio is None else float(max_aspect_ratio)

    def refuse(self, height: int, width: int) -> str | None:
        """Why an image of ``height x width`` (read from its header) must be skipped, or None.

        Decided before decoding or resizing: smaller than one patch, longer than
        ``max_aspect_ratio`` times its short side, or more than ``max_patches`` patches once
        resized (a 100000x2 strip would otherwise become a 120 GB tensor)."""
        if min(height, width) < self.patch_size:
            return f"{width}x{height} is smaller than one patch ({self.patch_size} px): nothing to decompose"
        ratio = max(height, width) / min(height, width)
        if self.max_aspect_ratio is not None and ratio > self.max_aspect_ratio:
            return (f"{width}x{height} has aspect ratio {ratio:.1f}, above resize.max_aspect_ratio="
                    f"{self.max_aspect_ratio:g} (null: no limit)")
        h, w = self.target_size(height, width)
        patches = (h // self.patch_size) * (w // self.patch_size)
        if self.max_patches is not None and patches > self.max_patches:
            return (f"{width}x{height} would be resized to {w}x{h}, {patches} patches, above resize.max_patches="
                    f"{self.max_patches} (null: no limit)")
        return None

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
