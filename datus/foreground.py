"""DINO's attention-map masks (Caron et al. 2021) and their foreground/background evaluation.

Per head of the last block, the CLS token's attention to the patches is normalised to sum 1 and
the patches holding the top ``mass`` of it (default 0.6, the paper's) form the mask. Against a
dataset's "thing" classes (e.g. CamVid's cars, pedestrians, poles) every labelled pixel counts:
IoU (Jaccard) of the mask with the things, over all pixels whose ground truth is not void.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["ForegroundScore", "attention_masks", "thing_mask"]


def attention_masks(attentions: Tensor, mass: float = 0.6) -> Tensor:
    """``(..., N)`` attention (any scale) -> ``(..., N)`` bool: the fewest patches holding ``mass`` of it.

    The kept patches hold at least ``mass`` of the normalised attention, and without the
    weakest of them they would hold less (ties broken by patch order).
    """
    if not 0 < float(mass) <= 1:
        raise ValueError(f"mass={mass} must be in (0, 1]")
    weights = attentions.float().clamp_min(0)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    ordered, order = weights.sort(dim=-1, descending=True, stable=True)
    before = ordered.cumsum(dim=-1) - ordered  # mass of the stronger patches before each one
    keep_sorted = before < float(mass) - 1e-7
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def thing_mask(mask: np.ndarray, classes: Sequence[str], things: Sequence[str]) -> np.ndarray:
    """``(H, W)`` class indices (255 void) -> bool foreground: the pixels of the ``things`` classes."""
    unknown = sorted(set(things) - set(classes))
    if unknown:
        raise ValueError(f"things={list(things)}: {', '.join(unknown)} not among the classes {list(classes)}")
    ids = np.array([classes.index(t) for t in things], dtype=np.int64)
    return np.isin(mask, ids)


@dataclass
class ForegroundScore:
    """IoU of predicted foreground masks with the truth, accumulated over a split (void pixels left out).

    ``iou`` pools every pixel of the split (intersection over union of the sums); ``mean_jaccard``
    averages the per-image IoU over the images that have things or a predicted foreground (the
    DINO paper's Jaccard is per image). ``foreground_fraction`` says how much the masks keep.
    """

    intersection: int = 0
    union: int = 0
    predicted: int = 0
    labelled: int = 0
    per_image: list[float] = field(default_factory=list)

    def update(self, predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float | None:
        """Add one image: bool ``predicted`` and ``truth`` foreground, ``valid`` = not void; its IoU."""
        if predicted.shape != truth.shape:
            raise ValueError(f"a {predicted.shape} mask cannot be scored against {truth.shape} ground truth")
        p, t = predicted & valid, truth & valid
        inter, union = int((p & t).sum()), int((p | t).sum())
        self.intersection += inter
        self.union += union
        self.predicted += int(p.sum())
        self.labelled += int(valid.sum())
        if union == 0:
            return None
        self.per_image.append(inter / union)
        return inter / union

    def result(self) -> dict[str, float]:
        return {"iou": 100.0 * self.intersection / max(self.union, 1),
                "mean_jaccard": 100.0 * float(np.mean(self.per_image)) if self.per_image else 0.0,
                "foreground_fraction": 100.0 * self.predicted / max(self.labelled, 1)}
