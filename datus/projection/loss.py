"""STEGO's feature-correlation distillation loss (Hamilton et al., ICLR 2022), on sampled patches.

For two sets of patches, the frozen features' cosine correlations ``F`` (each row centred,
"pointwise") say which pairs should share a class; the codes' correlations ``S`` are pulled up
where ``F`` exceeds a shift and pushed down (to zero, never below) where it does not:
``loss = -mean(max(S, 0) * (F - shift))``. Three pairings, each with its shift and weight: an
image with itself, with one of its k nearest neighbour images, and with a random other image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CorrelationLoss", "correlation_term"]


def correlation_term(f1: Tensor, f2: Tensor, c1: Tensor, c2: Tensor, shift: float, pointwise: bool = True) -> Tensor:
    """One pairing's loss for ``(B, N, D)`` features and ``(B, N, C)`` codes (``N`` sampled patches)."""
    with torch.no_grad():
        fd = torch.einsum("bnd,bmd->bnm", F.normalize(f1, dim=-1), F.normalize(f2, dim=-1))
        if pointwise:  # remove each patch's own mean correlation, keep the overall mean
            overall = fd.mean()
            fd = fd - fd.mean(dim=2, keepdim=True)
            fd = fd - fd.mean() + overall
    cd = torch.einsum("bnd,bmd->bnm", F.normalize(c1, dim=-1), F.normalize(c2, dim=-1))
    return -(cd.clamp(min=0) * (fd - shift)).mean()


@dataclass(frozen=True)
class CorrelationLoss:
    """Weights and shifts of the three pairings (``self``, ``knn`` neighbour, ``random`` image)."""

    self_weight: float = 0.67
    knn_weight: float = 0.25
    random_weight: float = 0.63
    self_shift: float = 0.25
    knn_shift: float = 0.2
    random_shift: float = 0.3
    pointwise: bool = True

    def __call__(self, feats: Tensor, codes: Tensor, feats_knn: Tensor, codes_knn: Tensor) -> dict[str, Tensor]:
        """The loss terms and their weighted sum (``loss``) for a batch of paired images.

        Random pairs are the batch's images rolled by one (a batch holds each image once; a batch
        of one image has no random pairing).
        """
        terms = {
            "self": correlation_term(feats, feats, codes, codes, self.self_shift, self.pointwise),
            "knn": correlation_term(feats, feats_knn, codes, codes_knn, self.knn_shift, self.pointwise),
        }
        loss = self.self_weight * terms["self"] + self.knn_weight * terms["knn"]
        if feats.shape[0] > 1:
            roll = torch.roll(torch.arange(feats.shape[0], device=feats.device), 1)
            terms["random"] = correlation_term(feats, feats[roll], codes, codes[roll], self.random_shift,
                                               self.pointwise)
            loss = loss + self.random_weight * terms["random"]
        terms["loss"] = loss
        return terms
