"""k-means with faiss (GPU when available): seeded, restarts, every point used, reusable centroids."""

from __future__ import annotations

import json
import logging
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from datus.io import write_npz

log = logging.getLogger(__name__)

#: faiss warns (on stderr) below this many points per cluster; we say it once in the log instead
FEW_POINTS_PER_CLUSTER = 39


def _whole(setting: str, value: object, minimum: int, hint: str = "") -> int:
    """``value`` as an int if it is a whole number >= ``minimum``; else an error naming ``setting``."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or value < minimum:
        raise ValueError(f"{setting}={value!r} must be a whole number >= {minimum} {hint}".rstrip())
    return int(value)


def _aligned(labels: np.ndarray, reference: np.ndarray, weights: np.ndarray, k: int) -> list[np.ndarray]:
    """Each row of ``labels`` (runs x points) relabelled to match ``reference`` best: the Hungarian
    assignment on their ``weights``-weighted co-occurrence of labels."""
    from scipy.optimize import linear_sum_assignment

    out = []
    for run in labels:
        together = np.zeros((k, k))
        np.add.at(together, (run, reference), weights)
        rows, cols = linear_sum_assignment(together, maximize=True)
        relabel = np.empty(k, dtype=np.int64)
        relabel[rows] = cols
        out.append(relabel[run])
    return out


class KMeans:
    """k-means over ``(n, d)`` features, optionally centred or after PCA (and whitening).

    ``center`` subtracts the features' mean before the (spherical) clustering: self-supervised
    keys share a large common component (the key bias) that otherwise dominates their angles.
    The defaults are ``conf/labeling/default.yaml``'s (``tests/test_architecture.py`` keeps them equal).

    faiss subsamples to ``max_points_per_centroid * k`` points by default (256 * k); here
    ``max_points_per_centroid=None`` means every point is used. ``nredo`` restarts keep the
    best objective (faiss has no k-means++). ``spherical`` renormalises centroids (cosine
    k-means on L2-normalised features). Fitted centroids label new features with
    :meth:`predict`, so new images need no re-clustering.

    ``overcluster`` > 1 first finds ``round(overcluster * k)`` clusters, then merges their
    centroids into ``k`` groups by average-linkage agglomerative clustering (cosine when
    spherical): k-means alone splits the big classes (road, sky) into several clusters and
    leaves the small ones none; merging fine clusters keeps more of the small ones apart. A
    feature's score for a group is its best score over the group's fine centroids;
    ``centroids`` are then the groups' normalised mean centroids.

    ``ensemble`` > 1 runs the whole clustering that many times (seeds ``seed * 1000 + r``) and lets the
    runs vote: each run's labels are matched to the current consensus by the Hungarian algorithm on
    their (weighted) co-occurrence, every point takes the label most runs give it, and this repeats
    until the consensus is stable; ``centroids`` are then its groups' normalised mean features. A
    partition that a few unlucky initialisations get wrong is outvoted by the others.
    """

    def __init__(
        self,
        k: int,
        niter: int = 50,
        nredo: int = 3,
        seed: int = 0,
        spherical: bool = True,
        center: bool = True,
        pca_dim: int | None = None,
        whiten: bool = False,
        max_points_per_centroid: int | None = None,
        overcluster: float = 3.0,
        ensemble: int = 1,
        gpu: bool | str = "auto",
    ) -> None:
        k = _whole("k", k, 2, "(the number of clusters)")
        niter = _whole("labeling.kmeans.niter", niter, 1)
        nredo = _whole("labeling.kmeans.nredo", nredo, 1)
        if pca_dim is not None:
            pca_dim = _whole("labeling.kmeans.pca_dim", pca_dim, 1, "(or null: no PCA)")
        if max_points_per_centroid is not None:
            max_points_per_centroid = _whole("labeling.kmeans.max_points_per_centroid", max_points_per_centroid, 1,
                                             "(or null: every point)")
        self.k, self.niter, self.nredo, self.seed = k, niter, nredo, int(seed)
        self.spherical, self.pca_dim, self.whiten = bool(spherical), pca_dim, bool(whiten)
        self.center = bool(center)
        self.max_points_per_centroid = max_points_per_centroid
        if isinstance(overcluster, bool) or not isinstance(overcluster, numbers.Real) or overcluster < 1:
            raise ValueError(f"labeling.kmeans.overcluster={overcluster!r} must be a number >= 1 "
                             "(1: no over-clustering; 2: 2K clusters merged into K)")
        self.overcluster = float(overcluster)
        self.ensemble = _whole("labeling.kmeans.ensemble", ensemble, 1, "(1: one clustering, no vote)")
        self.gpu = gpu
        #: over-clustering: the fine centroids and the group (0..k-1) of each
        self.fine_centroids: np.ndarray | None = None
        self.groups: np.ndarray | None = None
        self.centroids: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None
        self.objective: float | None = None
        self.points_used: int | None = None
        #: what the fitted features were (backbone, resize, feature, head, ...; see :meth:`save`)
        self.settings: dict[str, Any] | None = None
        #: with ``ensemble`` > 1: the share of points each run labels as the consensus does
        self.agreement: list[float] | None = None

    @property
    def fitted(self) -> bool:
        """Whether it has centroids (fitted here or loaded): it can label features without fitting."""
        return self.centroids is not None

    def _use_gpu(self) -> bool:
        import faiss

        if self.gpu == "auto":
            return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        return bool(self.gpu)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Centre/project/whiten as fitted, then L2-normalise if spherical."""
        x = np.asarray(x, dtype=np.float32)
        if self.projection is not None:
            x = (x - self.mean) @ self.projection
        elif self.mean is not None:
            x = x - self.mean
        if self.spherical:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _fit_pca(self, x: np.ndarray) -> None:
        if self.pca_dim is None and not self.whiten:
            self.mean = x.mean(axis=0) if self.center else None
            return
        self.mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        dim = min(self.pca_dim or x.shape[1], vt.shape[0])
        proj = vt[:dim].T
        if self.whiten:
            proj = proj / np.maximum(s[:dim] / math.sqrt(max(len(x) - 1, 1)), 1e-6)
        self.projection = proj.astype(np.float32)

    def fit(self, features: np.ndarray, weights: np.ndarray | None = None) -> KMeans:
        """Cluster ``features`` (optionally weighted, e.g. by segment size); needs ``k`` points."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or len(x) < self.k:
            raise ValueError(f"k-means with k={self.k} needs at least {self.k} points, got {len(x)}")
        if self.ensemble == 1:
            return self._fit_once(x, weights)
        return self._fit_ensemble(x, weights)

    def _fit_ensemble(self, x: np.ndarray, weights: np.ndarray | None) -> KMeans:
        """``ensemble`` clusterings of ``x``, then their consensus by aligned majority vote (see the class)."""
        w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
        runs = []
        for r in range(self.ensemble):
            member = KMeans(self.k, niter=self.niter, nredo=self.nredo, seed=self.seed * 1000 + r,
                            spherical=self.spherical, center=self.center, pca_dim=self.pca_dim, whiten=self.whiten,
                            max_points_per_centroid=self.max_points_per_centroid, overcluster=self.overcluster,
                            gpu=self.gpu)
            runs.append(member._fit_once(x, weights).predict(x))
        labels = np.stack(runs)
        # start from the run that agrees most with the others, then vote until the consensus holds
        agreement = [sum(float((aligned == run).mean()) for aligned in _aligned(labels, run, w, self.k)) for run in labels]
        consensus = labels[int(np.argmax(agreement))]
        for _ in range(10):
            votes = np.zeros((len(x), self.k))
            for aligned in _aligned(labels, consensus, w, self.k):
                votes[np.arange(len(x)), aligned] += 1
            voted = votes.argmax(axis=1)
            if np.array_equal(voted, consensus):
                break
            consensus = voted
        self._fit_pca(x)
        transformed = self.transform(x)
        means = np.zeros((self.k, x.shape[1] if self.projection is None else self.projection.shape[1]))
        np.add.at(means, consensus, transformed * w[:, None])
        if self.spherical:
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        else:
            means /= np.maximum(np.bincount(consensus, weights=w, minlength=self.k), 1e-12)[:, None]
        self.centroids, self.fine_centroids, self.groups = means.astype(np.float32), None, None
        #: the share of points each run labels as the consensus does (its labels matched to the consensus')
        self.agreement = [float((aligned == consensus).mean()) for aligned in _aligned(labels, consensus, w, self.k)]
        self.objective, self.points_used = None, len(x)
        return self

    def _fit_once(self, x: np.ndarray, weights: np.ndarray | None) -> KMeans:
        import faiss

        # over-clustering asks for more clusters than a small split may have points: as many as there are
        fine = max(self.k, min(round(self.overcluster * self.k), len(x)))
        self._fit_pca(x)
        x = self.transform(x)
        per_centroid = self.max_points_per_centroid or math.ceil(len(x) / fine) + 1
        if len(x) < FEW_POINTS_PER_CLUSTER * fine:  # said once, in our words (faiss would print it to stderr)
            log.info("k-means: %d points for %d clusters (fewer than %d each, as on a few demo images): the "
                     "clusters rest on few points", len(x), fine, FEW_POINTS_PER_CLUSTER)
        km = faiss.Kmeans(
            x.shape[1], fine, niter=self.niter, nredo=self.nredo, seed=self.seed,
            spherical=self.spherical, max_points_per_centroid=per_centroid,
            min_points_per_centroid=1,  # only silences faiss's stderr warning: the clustering is the same
            gpu=self._use_gpu(), verbose=False,
        )
        km.train(x, weights=None if weights is None else np.ascontiguousarray(weights, dtype=np.float32))
        centroids = np.asarray(km.centroids, dtype=np.float32)
        self.objective = float(km.obj[-1]) if len(km.obj) else None
        self.points_used = min(len(x), per_centroid * fine)
        if fine == self.k:
            self.centroids, self.fine_centroids, self.groups = centroids, None, None
        else:
            self._merge(centroids)
        return self

    def _merge(self, fine: np.ndarray) -> None:
        """Group ``fine`` centroids into ``k`` by average linkage; the groups' mean centroids become ``centroids``."""
        from scipy.cluster.hierarchy import fcluster, linkage

        tree = linkage(fine.astype(np.float64), method="average", metric="cosine" if self.spherical else "euclidean")
        groups = fcluster(tree, self.k, criterion="maxclust") - 1
        if len(np.unique(groups)) != self.k:  # ties can leave fewer groups: split the largest until k
            groups = np.unique(groups, return_inverse=True)[1]
            while groups.max() + 1 < self.k:
                largest = np.bincount(groups).argmax()
                members = np.flatnonzero(groups == largest)
                groups[members[len(members) // 2:]] = groups.max() + 1
        means = np.stack([fine[groups == g].mean(axis=0) for g in range(self.k)])
        if self.spherical:
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        self.fine_centroids, self.groups = fine, groups.astype(np.int64)
        self.centroids = means.astype(np.float32)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(n, k)`` closeness of each feature to each centroid: cosine similarity if spherical, else
        the negative squared distance (higher = closer; the argmax is :meth:`predict`)."""
        if self.centroids is None:
            raise RuntimeError("KMeans.predict before fit/load")
        x = self.transform(features)
        centroids = self.centroids if self.fine_centroids is None else self.fine_centroids
        if self.spherical:
            scores = x @ centroids.T
        else:
            scores = -((x**2).sum(1, keepdims=True) - 2 * x @ centroids.T + (centroids**2).sum(1))
        if self.fine_centroids is None:
            return scores
        grouped = np.full((len(x), self.k), -np.inf, dtype=scores.dtype)
        for g in range(self.k):
            grouped[:, g] = scores[:, self.groups == g].max(axis=1)
        return grouped

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Nearest centroid of each feature, ``(n,)`` int64 (inner product if spherical)."""
        return self.scores(features).argmax(axis=1).astype(np.int64)

    def save(self, path: str | Path, settings: dict[str, Any] | None = None) -> Path:
        """Save centroids and preprocessing as ``.npz`` (no pickle), with ``settings`` (what the clustered
        features were: another split labelled with these centroids must have the same, see
        :func:`datus.labeling.inductive.check_centroids`) as a JSON string."""
        settings = settings if settings is not None else self.settings
        arrays = {"centroids": self.centroids, "spherical": np.array(self.spherical)}
        if settings is not None:
            arrays["settings"] = np.array(json.dumps(settings, sort_keys=True))
        if self.mean is not None:
            arrays["mean"] = self.mean
        if self.projection is not None:
            arrays["projection"] = self.projection
        if self.fine_centroids is not None:
            arrays["fine_centroids"], arrays["groups"] = self.fine_centroids, self.groups
        return write_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> KMeans:
        with np.load(path, allow_pickle=False) as z:
            km = cls(k=max(2, len(z["centroids"])), spherical=bool(z["spherical"]))
            km.centroids = z["centroids"]
            if "mean" in z.files:
                km.mean = z["mean"]
            if "projection" in z.files:
                km.projection = z["projection"]
            if "fine_centroids" in z.files:
                km.fine_centroids, km.groups = z["fine_centroids"], z["groups"]
            if "settings" in z.files:
                km.settings = json.loads(str(z["settings"]))
        return km
