"""Louvain community detection behind interchangeable backends, seeded and deterministic.

``python-louvain`` on a networkx graph is the reference; ``igraph`` (compiled multilevel
Louvain, the default: about 50x faster on patch graphs) and ``leiden`` (igraph's Leiden,
optimising modularity) are the fast ones. Every backend takes the same dense adjacency and
returns one community label per node, relabelled 0..C-1 in order of first appearance.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Backend = Callable[[np.ndarray, float, int], np.ndarray]
_BACKENDS: dict[str, Backend] = {}


def register_community_backend(name: str) -> Callable[[Backend], Backend]:
    """Decorator: make ``fn(adjacency, resolution, seed) -> labels`` available as ``backend=name``."""

    def add(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        return fn

    return add


def list_community_backends() -> list[str]:
    return sorted(_BACKENDS)


def _edges(adjacency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangle edge list ``(E, 2)`` and weights ``(E,)`` of a symmetric adjacency."""
    rows, cols = np.nonzero(np.triu(adjacency, k=1))
    return np.stack([rows, cols], axis=1), adjacency[rows, cols].astype(np.float64)


def _igraph(adjacency: np.ndarray):
    import igraph

    edges, weights = _edges(adjacency)
    graph = igraph.Graph(n=adjacency.shape[0], edges=edges.tolist(), directed=False)
    graph.es["weight"] = weights.tolist()
    return graph


@register_community_backend("igraph")
def _igraph_multilevel(adjacency: np.ndarray, resolution: float, seed: int) -> np.ndarray:
    import igraph

    graph = _igraph(adjacency)
    igraph.set_random_number_generator(random.Random(seed))
    try:
        parts = graph.community_multilevel(weights="weight", resolution=resolution)
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(parts.membership)


@register_community_backend("leiden")
def _igraph_leiden(adjacency: np.ndarray, resolution: float, seed: int) -> np.ndarray:
    import igraph

    graph = _igraph(adjacency)
    igraph.set_random_number_generator(random.Random(seed))
    try:
        parts = graph.community_leiden(
            objective_function="modularity", weights="weight", resolution=resolution, n_iterations=-1
        )
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(parts.membership)


@register_community_backend("python-louvain")
def _python_louvain(adjacency: np.ndarray, resolution: float, seed: int) -> np.ndarray:
    import networkx as nx
    from community import community_louvain

    graph = nx.from_numpy_array(adjacency)
    partition = community_louvain.best_partition(
        graph, weight="weight", resolution=resolution, random_state=seed
    )
    return np.array([partition[i] for i in range(adjacency.shape[0])])


def relabel_in_order(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..C-1 by first appearance, so equal partitions get equal arrays."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int32)


def modularity(adjacency: np.ndarray, labels: np.ndarray, resolution: float = 1.0) -> float:
    """Newman modularity of a partition of a weighted undirected graph (vectorised)."""
    two_m = adjacency.sum()
    if two_m == 0:
        return 0.0
    onehot = np.zeros((labels.size, labels.max() + 1))
    onehot[np.arange(labels.size), labels] = 1.0
    inside = np.einsum("ic,ij,jc->", onehot, adjacency, onehot)
    degree_per_community = onehot.T @ adjacency.sum(axis=1)
    return float(inside / two_m - resolution * ((degree_per_community / two_m) ** 2).sum())


@dataclass
class Louvain:
    """Community detection with ``backend`` at ``resolution`` (higher = more, smaller communities)."""

    backend: str = "igraph"
    resolution: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise ValueError(
                f"graph.louvain.backend={self.backend!r}: choose one of {list_community_backends()}"
            )
        if self.resolution <= 0:
            raise ValueError(f"graph.louvain.resolution={self.resolution} must be > 0")

    def __call__(self, adjacency: np.ndarray) -> np.ndarray:
        """Community label per node, ``(N,)`` int32 in 0..C-1. Isolated nodes are singletons."""
        adjacency = np.asarray(adjacency, dtype=np.float64)
        if not adjacency.any():
            return np.arange(adjacency.shape[0], dtype=np.int32)
        labels = _BACKENDS[self.backend](adjacency, float(self.resolution), int(self.seed))
        return relabel_in_order(labels)
