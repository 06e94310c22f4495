"""Affinity graphs over the patches of one image, built with array operations only.

The DatUS² paper's graph is dense and binary: an edge wherever the dot product of two patches'
keys is positive. On DINOv2 the key projection's bias makes every dot product positive (a
complete graph, from which Louvain learns nothing), so the features can first be de-biased:
``debias="center"`` subtracts the image's mean feature, ``"remove_key_bias"`` subtracts the key
projection's bias (the caller passes it). Weighted forms keep cosine similarities, optionally
only each patch's ``knn`` nearest neighbours and/or those above ``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

AFFINITY_KINDS = ("binary", "cosine")
DEBIAS_CHOICES = ("none", "center", "remove_key_bias")


@dataclass
class Affinity:
    """How to turn ``(N, D)`` patch features into a symmetric ``(N, N)`` non-negative adjacency.

    Features are first de-biased (``debias``), then L2-normalised if ``l2_normalize``
    (``kind="binary"`` only: cosine normalises anyway; the sign of a dot product does not
    change, so this only matters with ``threshold``). ``kind="binary"``: the paper's
    ``A_ij = [f_i . f_j > 0]``. ``kind="cosine"``: cosine
    similarity, negatives set to 0. ``knn``: keep each node's k strongest edges (symmetrised
    by union). ``threshold``: drop edges weaker than it. The diagonal is always 0.
    """

    kind: str = "cosine"
    debias: str = "center"
    l2_normalize: bool = False
    knn: int | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in AFFINITY_KINDS:
            raise ValueError(f"graph.affinity.kind={self.kind!r}: choose one of {AFFINITY_KINDS}")
        if self.debias not in DEBIAS_CHOICES:
            raise ValueError(f"graph.affinity.debias={self.debias!r}: choose one of {DEBIAS_CHOICES}")
        if self.knn is not None and self.knn < 1:
            raise ValueError(f"graph.affinity.knn={self.knn} must be >= 1 (or null for dense)")

    def prepare(self, features: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """Apply the configured de-biasing to ``(N, D)`` features."""
        x = features.float()
        if self.debias == "center":
            x = x - x.mean(dim=0, keepdim=True)
        elif self.debias == "remove_key_bias":
            if key_bias is None:
                raise ValueError(
                    "graph.affinity.debias=remove_key_bias needs a ViT's key bias and "
                    "graph.feature=keys; use debias=center for other features or backbones"
                )
            x = x - key_bias.to(x)
        if self.l2_normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        return x

    def __call__(self, features: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """The ``(N, N)`` float32 adjacency of ``(N, D)`` features (same device)."""
        x = self.prepare(features, key_bias)
        if self.kind == "binary":
            adjacency = (x @ x.T > 0).float()
        else:
            x = torch.nn.functional.normalize(x, dim=1)
            adjacency = (x @ x.T).clamp_min(0)
        adjacency.fill_diagonal_(0)
        if self.threshold is not None:
            adjacency = torch.where(adjacency >= self.threshold, adjacency, torch.zeros_like(adjacency))
        if self.knn is not None and self.knn < adjacency.shape[0] - 1:
            top = adjacency.topk(self.knn, dim=1).indices
            keep = torch.zeros_like(adjacency, dtype=torch.bool).scatter_(1, top, True)
            keep = keep | keep.T
            adjacency = torch.where(keep, adjacency, torch.zeros_like(adjacency))
        return adjacency


def density(adjacency: Tensor) -> float:
    """Fraction of the possible (off-diagonal) edges that are present."""
    n = adjacency.shape[0]
    return float((adjacency > 0).sum()) / max(1, n * (n - 1))
