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

import numpy as np
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
    by union; None: every edge, the paper's dense graph). ``threshold``: drop edges weaker than it. The diagonal is always 0.
    """

    kind: str = "cosine"
    debias: str = "center"
    l2_normalize: bool = False
    knn: int | None = 10
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

    def _weights(self, features: Tensor, key_bias: Tensor | None) -> Tensor:
        x = self.prepare(features, key_bias)
        if self.kind == "binary":
            adjacency = (x @ x.T > 0).float()
        else:
            x = torch.nn.functional.normalize(x, dim=1)
            adjacency = (x @ x.T).clamp_min(0)
        adjacency.fill_diagonal_(0)
        if self.threshold is not None:
            adjacency = torch.where(adjacency >= self.threshold, adjacency, torch.zeros_like(adjacency))
        return adjacency

    def _use_knn(self, n: int) -> bool:
        return self.knn is not None and self.knn < n - 1

    def __call__(self, features: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """The dense ``(N, N)`` float32 adjacency of ``(N, D)`` features (same device)."""
        adjacency = self._weights(features, key_bias)
        if self._use_knn(adjacency.shape[0]):
            top = adjacency.topk(self.knn, dim=1).indices
            keep = torch.zeros_like(adjacency, dtype=torch.bool).scatter_(1, top, True)
            keep = keep | keep.T
            adjacency = torch.where(keep, adjacency, torch.zeros_like(adjacency))
        return adjacency

    def graph(self, features: Tensor, key_bias: Tensor | None = None) -> PatchGraph:
        """The same graph as an edge list; k-NN graphs skip the dense ``N x N`` scan."""
        adjacency = self._weights(features, key_bias)
        n = adjacency.shape[0]
        if not self._use_knn(n):
            return PatchGraph.from_dense(adjacency)
        values, top = adjacency.topk(self.knn, dim=1)
        rows = torch.arange(n, device=top.device).repeat_interleave(self.knn)
        cols, values = top.reshape(-1), values.reshape(-1)
        nonzero = values > 0
        lo = torch.minimum(rows, cols)[nonzero]
        hi = torch.maximum(rows, cols)[nonzero]
        keys = torch.unique(lo * n + hi)  # union of both directions, sorted
        lo, hi = keys // n, keys % n
        weights = adjacency[lo, hi]
        return PatchGraph(n, torch.stack([lo, hi], 1).cpu().numpy(), weights.double().cpu().numpy())


@dataclass
class PatchGraph:
    """An undirected weighted graph as an edge list: ``edges`` ``(E, 2)`` with i < j, ``weights`` ``(E,)``.

    ``matrix`` optionally keeps the symmetric ``(N, N)`` float32 adjacency it came from (dense
    graphs): a backend can hand that to a compiled constructor in one call, where turning tens of
    thousands of edges into a graph pair by pair costs more than the clustering.
    """

    num_nodes: int
    edges: np.ndarray
    weights: np.ndarray
    matrix: np.ndarray | None = None

    @classmethod
    def from_dense(cls, adjacency: Tensor | np.ndarray) -> PatchGraph:
        a = torch.as_tensor(adjacency)
        edges = torch.nonzero(torch.triu(a, diagonal=1))
        weights = a[edges[:, 0], edges[:, 1]]
        return cls(a.shape[0], edges.cpu().numpy(), weights.double().cpu().numpy(), a.float().cpu().numpy())

    @property
    def density(self) -> float:
        """Fraction of the possible edges present."""
        return 2 * len(self.edges) / max(1, self.num_nodes * (self.num_nodes - 1))

    @property
    def binary(self) -> bool:
        """Whether every edge weighs 1 (the paper's graph)."""
        return bool(np.all(self.weights == 1))

    def dense(self) -> np.ndarray:
        """The symmetric ``(N, N)`` adjacency (for tests and modularity)."""
        a = np.zeros((self.num_nodes, self.num_nodes))
        a[self.edges[:, 0], self.edges[:, 1]] = self.weights
        return a + a.T


def density(adjacency: Tensor) -> float:
    """Fraction of the possible (off-diagonal) edges that are present."""
    n = adjacency.shape[0]
    return float((adjacency > 0).sum()) / max(1, n * (n - 1))
