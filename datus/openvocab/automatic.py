"""SAM's automatic masks: a grid of point prompts, the decoder's masks filtered and deduplicated.

As ``segment-anything``'s ``SamAutomaticMaskGenerator`` does, for one crop (the whole image): every
point of an ``n x n`` grid prompts the decoder alone; each of its masks (logits > 0) is kept when
the decoder's predicted IoU reaches ``pred_iou_thresh`` and its stability (the IoU of the mask
thresholded at +-``stability_offset``) reaches ``stability_thresh``; then, best predicted IoU first,
a mask overlapping an already kept one by more than ``dedupe_iou`` (mask IoU) is dropped.
:func:`paint` resolves what overlaps remain: a pixel belongs to the kept mask of highest predicted
IoU that covers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datus.openvocab.models import SamImageEncoder, SamPromptDecoder

__all__ = ["AutomaticMasks", "MaskProposal", "deduplicate", "paint", "point_grid", "stability_score"]


@dataclass
class MaskProposal:
    """One kept mask: ``(H, W)`` bool, the decoder's predicted IoU, its stability, its prompt point."""

    mask: np.ndarray
    predicted_iou: float
    stability: float
    point: tuple[float, float]

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def point_grid(points_per_side: int, height: int, width: int) -> np.ndarray:
    """``(n * n, 2)`` (x, y) pixel positions: the centres of an ``n x n`` grid over the image."""
    if int(points_per_side) < 1:
        raise ValueError(f"points_per_side={points_per_side} must be >= 1")
    n = int(points_per_side)
    offsets = (np.arange(n) + 0.5) / n
    xs, ys = np.meshgrid(offsets * width, offsets * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def stability_score(logits: np.ndarray, threshold: float = 0.0, offset: float = 1.0) -> float:
    """IoU of the mask thresholded at ``threshold + offset`` and at ``threshold - offset``."""
    inner = int((logits > threshold + offset).sum())
    outer = int((logits > threshold - offset).sum())
    return inner / outer if outer else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def deduplicate(proposals: list[MaskProposal], iou: float) -> list[MaskProposal]:
    """Best predicted IoU first; drop a mask whose IoU with a kept one exceeds ``iou``."""
    kept: list[MaskProposal] = []
    for proposal in sorted(proposals, key=lambda p: p.predicted_iou, reverse=True):
        if all(mask_iou(proposal.mask, other.mask) <= iou for other in kept):
            kept.append(proposal)
    return kept


def paint(proposals: list[MaskProposal], shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` int map: each pixel's covering proposal of highest predicted IoU (index into
    ``proposals``), -1 where none covers it."""
    owner = np.full(shape, -1, dtype=np.int64)
    best = np.full(shape, -np.inf)
    for index, proposal in enumerate(proposals):
        better = proposal.mask & (proposal.predicted_iou > best)
        owner[better], best[better] = index, proposal.predicted_iou
    return owner


class AutomaticMasks:
    """``masks(image) -> list[MaskProposal]`` for an ``(H, W, 3)`` uint8 image (see the module docstring)."""

    def __init__(self, encoder: SamImageEncoder, decoder: SamPromptDecoder, *, points_per_side: int = 16,
                 pred_iou_thresh: float = 0.88, stability_thresh: float = 0.95, stability_offset: float = 1.0,
                 dedupe_iou: float = 0.7, min_area: int = 0) -> None:
        for name, value in (("pred_iou_thresh", pred_iou_thresh), ("stability_thresh", stability_thresh),
                            ("dedupe_iou", dedupe_iou)):
            if not 0 <= float(value) <= 1:
                raise ValueError(f"method.sam.{name}={value} must be in [0, 1]")
        point_grid(points_per_side, 1, 1)  # checks points_per_side
        self.encoder, self.decoder = encoder, decoder
        self.points_per_side, self.pred_iou_thresh = int(points_per_side), float(pred_iou_thresh)
        self.stability_thresh, self.stability_offset = float(stability_thresh), float(stability_offset)
        self.dedupe_iou, self.min_area = float(dedupe_iou), int(min_area)

    def __call__(self, image: np.ndarray) -> list[MaskProposal]:
        height, width = image.shape[:2]
        embedding, scale = self.encoder.encode(image)
        candidates = []
        for x, y in point_grid(self.points_per_side, height, width):
            logits, ious = self.decoder.decode(embedding, np.array([[x * scale, y * scale]]), (height, width))
            for mask_logits, predicted in zip(logits[0], ious[0]):
                if predicted < self.pred_iou_thresh:
                    continue
                stability = stability_score(mask_logits, 0.0, self.stability_offset)
                mask = mask_logits > 0
                if stability < self.stability_thresh or mask.sum() <= self.min_area:
                    continue
                candidates.append(MaskProposal(mask, float(predicted), stability, (float(x), float(y))))
        return deduplicate(candidates, self.dedupe_iou)
