"""Pseudo-labelling (DatUS² steps 5-6): k-means over segment features, one pseudo mask per image."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datus.discovery.store import SegmentStore
from datus.io import named_write_errors, scratch_file, write_npz
from datus.labeling.kmeans import KMeans
from datus.masks import UNLABELLED, patch_labels, save_masks, upsample_labels
from datus.shards import ArrayRecord

log = logging.getLogger(__name__)


#: ``(dataset index, (K, h, w) per-patch cluster scores) -> (H, W) uint8 mask`` at the original size,
#: e.g. the dense CRF with the image (see :func:`datus.pipeline.crf_from_scores`).
ScoresToMask = Callable[[int, np.ndarray], np.ndarray]


def training_sample(count: int, kmeans: KMeans) -> np.ndarray | None:
    """Sorted indices of the points k-means trains on, or None for all of them.

    With ``labeling.kmeans.max_points_per_centroid`` set, at most ``k`` times that many points
    are drawn (seeded) before anything is converted to float32, so labelling a huge split
    needs memory for the sample, not for every segment; without it every point is used.
    """
    limit = None if kmeans.max_points_per_centroid is None else kmeans.k * kmeans.max_points_per_centroid
    if limit is None or count <= limit:
        return None
    return np.sort(np.random.default_rng(kmeans.seed).choice(count, size=limit, replace=False))


def run_labeling(
    store: SegmentStore,
    *,
    out_dir: str | Path,
    kmeans: KMeans,
    segment_features: Mapping[int, np.ndarray] | None = None,
    fill: bool = False,
    weighted: bool = False,
    scores_to_mask: ScoresToMask | None = None,
    fit: bool = True,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cluster the valid segments of every image in ``store``; write pseudo masks and centroids.

    ``segment_features`` (dataset index -> ``(S, D)``, every segment of the image) replaces the
    stored mean patch features (e.g. crop CLS embeddings). ``fill=True`` also gives invalid
    segments their nearest centroid (not used to fit it), so fewer pixels stay unlabelled.
    ``weighted=True`` weighs each segment by its size in patches, so k-means minimises the
    error per patch (as pixels are scored) rather than per segment. ``scores_to_mask`` makes
    each mask from the per-patch cluster scores (each patch its segment's scores to every
    centroid) instead of the hard labels, e.g. through the dense CRF; without ``fill`` the
    pixels of invalid segments stay unlabelled.

    Memory grows with the number of segments only: the store is streamed twice (the valid
    segments' features go to a float16 scratch file that is memory-mapped, then labels and
    masks are made image by image), and per-patch maps are never held for more than one shard.
    k-means then needs float32 copies of every valid feature, or of a seeded sample of
    ``k * max_points_per_centroid`` of them when that is set (the setting for huge splits).
    ``fit=False`` labels with ``kmeans`` as it is (fitted on another split: no first pass);
    ``settings`` are recorded in ``centroids.npz`` (what the features were).
    """
    out_dir = Path(out_dir)

    def features_of(record) -> np.ndarray:
        source = segment_features[record.index] if segment_features is not None else record.decomposition.segment_features
        return np.asarray(source, dtype=np.float32)

    if fit:
        segments_clustered, images = _fit_segments(store, kmeans, features_of, out_dir, weighted)
    else:
        segments_clustered, images = 0, len(store.done_indices())
        if not images:
            raise ValueError(f"no segments in {store.folder}: run discovery first")
    assigned = _LabelPass(kmeans, features_of, fill=fill, scores_to_mask=scores_to_mask)
    written = save_masks(out_dir, assigned.masks(store), kmeans.k)
    folder = out_dir / "labeling"
    kmeans.save(folder / "centroids.npz", settings)
    write_npz(folder / "assignments.npz", **assigned.arrays())
    return {
        "method": "datus",
        "k": kmeans.k,
        "images": images,
        "segments_clustered": segments_clustered,
        "fitted": fit,
        "kmeans_points_used": kmeans.points_used,
        "kmeans_objective": kmeans.objective,
        **({"kmeans_ensemble_agreement": kmeans.agreement} if getattr(kmeans, "agreement", None) else {}),
        "fill": fill,
        "weighted": weighted,
        "postprocessed": scores_to_mask is not None,
        "coverage": written["coverage"],
        "coverage_without_fill": assigned.coverage_without_fill() if fill else written["coverage"],
        "cluster_pixels": written["cluster_pixels"],
    }


class _LabelPass:
    """Pass 2 of :func:`run_labeling`: each image's segment labels and mask, streamed image by image;
    keeps the labels per segment (``assignments.npz``) and the coverage ``fill`` added."""

    def __init__(self, kmeans: KMeans, features_of: Callable, *, fill: bool, scores_to_mask: ScoresToMask | None):
        self.kmeans, self.features_of, self.fill, self.scores_to_mask = kmeans, features_of, fill, scores_to_mask
        self.indices: list[int] = []
        self.stems: list[str] = []
        self.labels: list[np.ndarray] = []
        self.covered_strict = self.total = 0

    def masks(self, store: SegmentStore):
        """``(stem, mask, original size)`` per image, as :func:`datus.masks.save_masks` reads them."""
        k = self.kmeans.k
        for record in store:
            dec = record.decomposition
            feats = self.features_of(record)
            scores = self.kmeans.scores(feats) if len(feats) else np.zeros((0, k), dtype=np.float32)
            labels = scores.argmax(axis=1).astype(np.int64)
            strict = np.where(dec.segment_valid, labels, -1)
            chosen = labels if self.fill else strict
            self.indices.append(record.index)
            self.stems.append(record.stem)
            self.labels.append(chosen.astype(np.int16))
            if self.fill:
                mask = upsample_labels(patch_labels(dec.segments, strict), record.orig_size)
                self.covered_strict += int((mask != UNLABELLED).sum())
                self.total += mask.size
            if self.scores_to_mask is None:
                yield record.stem, patch_labels(dec.segments, chosen), record.orig_size
                continue
            mask = self.scores_to_mask(record.index, scores[dec.segments].transpose(2, 0, 1))
            if not self.fill:  # invalid segments stay unlabelled
                mask = np.where(upsample_labels(patch_labels(dec.segments, strict), mask.shape) == UNLABELLED,
                                UNLABELLED, mask).astype(np.uint8)
            yield record.stem, mask, record.orig_size

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "indices": np.array(self.indices, dtype=np.int64),
            "stems": np.array(self.stems, dtype=str),
            "segment_offsets": np.cumsum([0] + [len(lab) for lab in self.labels]).astype(np.int64),
            "labels": np.concatenate(self.labels).astype(np.int16),
        }

    def coverage_without_fill(self) -> float:
        return self.covered_strict / self.total if self.total else 0.0


def _fit_segments(store: SegmentStore, kmeans: KMeans, features_of: Callable, out_dir: Path,
                  weighted: bool) -> tuple[int, int]:
    """k-means over the valid segments of ``store`` (pass 1 of :func:`run_labeling`): their features go
    to a float16 scratch file first, so memory holds the segments clustered, not every per-patch map.
    Returns (segments clustered, images)."""
    sizes, images, count, dim = [], 0, 0, None
    with scratch_file(out_dir / "labeling", "valid_features.f16") as spill:
        with named_write_errors(spill), open(spill, "wb") as f:  # pass 1: the valid segments' features, float16, to disk
            for record in store:
                valid = record.decomposition.segment_valid
                rows = np.ascontiguousarray(features_of(record)[valid], dtype=np.float16)
                f.write(rows.tobytes())
                count, dim = count + len(rows), rows.shape[1]
                sizes.append(record.decomposition.segment_sizes[valid].astype(np.float32))
                images += 1
        if not images:
            raise ValueError(f"no segments in {store.folder}: run discovery first")
        stored = np.memmap(spill, dtype=np.float16, mode="r", shape=(count, dim)) if count else np.zeros((0, 1))
        sample = training_sample(count, kmeans)
        train = np.asarray(stored if sample is None else stored[sample], dtype=np.float32)
        weights = np.concatenate(sizes) if weighted else None
        if weights is not None and sample is not None:
            weights = weights[sample]
        del stored
    log.info("k-means: %d valid segments of %d images (%d used), k=%d", count, images, len(train), kmeans.k)
    kmeans.fit(train, weights=weights)
    return count, images


def label_patches(
    patch_features: Mapping[int, ArrayRecord],
    *,
    out_dir: str | Path,
    kmeans: KMeans,
    scores_to_mask: ScoresToMask | None = None,
    fit: bool = True,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The baseline: k-means on every L2-normalised patch feature of the split, masks per patch
    (or made by ``scores_to_mask`` from the ``(K, h, w)`` patch-to-centroid scores). ``fit=False``
    labels with ``kmeans`` as it is; ``settings`` are recorded in ``centroids.npz``."""
    out_dir = Path(out_dir)
    order = sorted(patch_features)
    clustered = 0
    if fit:
        train = np.concatenate([patch_features[i].rows for i in order]).astype(np.float32)
        log.info("k-means on %d patches of %d images, k=%d", len(train), len(order), kmeans.k)
        kmeans.fit(train)
        clustered = len(train)
        del train
    kmeans.save(out_dir / "labeling" / "centroids.npz", settings)

    def masks():
        for i in order:
            stem, feats, meta = patch_features[i].stem, patch_features[i].rows, patch_features[i].meta
            grid, size = meta[:2], meta[2:4]
            scores = kmeans.scores(feats.astype(np.float32))
            if scores_to_mask is None:
                yield stem, scores.argmax(axis=1).reshape(grid).astype(np.uint8), size
            else:
                yield stem, scores_to_mask(i, scores.T.reshape(-1, *grid)), size

    written = save_masks(out_dir, masks(), kmeans.k)
    return {
        "method": "kmeans_patches",
        "k": kmeans.k,
        "images": len(order),
        "patches_clustered": int(clustered),
        "fitted": fit,
        "postprocessed": scores_to_mask is not None,
        "kmeans_points_used": kmeans.points_used,
        "kmeans_objective": kmeans.objective,
        "coverage": written["coverage"],
        "cluster_pixels": written["cluster_pixels"],
    }
