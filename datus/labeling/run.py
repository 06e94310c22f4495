"""Pseudo-labelling (DatUS² steps 5-6): k-means over segment features, one pseudo mask per image."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from datus.discovery.store import SegmentStore
from datus.io import atomic_write
from datus.labeling.kmeans import KMeans
from datus.labeling.masks import (
    UNLABELLED,
    palette,
    patch_labels,
    save_color_mask,
    save_legend,
    save_mask,
    upsample_labels,
)

log = logging.getLogger(__name__)


def write_pseudo_masks(out_dir: Path, masks: Iterable[tuple[str, np.ndarray, tuple[int, int]]], k: int) -> dict[str, Any]:
    """Write ``pseudo_masks/<stem>.png`` and ``pseudo_masks_color/<stem>.png`` at original size.

    ``masks`` yields ``(stem, (h, w) patch labels, (H, W) original size)``. Returns pixel
    coverage and cluster sizes.
    """
    colors = palette(k)
    counts = np.zeros(256, dtype=np.int64)
    for stem, labels, size in masks:
        mask = upsample_labels(labels, size)
        save_mask(out_dir / "pseudo_masks" / f"{stem}.png", mask)
        save_color_mask(out_dir / "pseudo_masks_color" / f"{stem}.png", mask, colors)
        counts += np.bincount(mask.ravel(), minlength=256)
    save_legend(out_dir / "pseudo_masks_color" / "legend.png", k, colors)
    total = counts.sum()
    return {
        "coverage": float(1 - counts[UNLABELLED] / total) if total else 0.0,
        "cluster_pixels": counts[:k].tolist(),
        "unlabelled_pixels": int(counts[UNLABELLED]),
    }


def _pixel_coverage(records, labels_per_image) -> float:
    covered = total = 0
    for record, labels in zip(records, labels_per_image):
        mask = upsample_labels(patch_labels(record.decomposition.segments, labels), record.orig_size)
        covered += int((mask != UNLABELLED).sum())
        total += mask.size
    return covered / total if total else 0.0


def run_labeling(
    store: SegmentStore,
    out_dir: str | Path,
    kmeans: KMeans,
    segment_features: dict[int, np.ndarray] | None = None,
    fill: bool = False,
    weighted: bool = False,
) -> dict[str, Any]:
    """Cluster the valid segments of every image in ``store``; write pseudo masks and centroids.

    ``segment_features`` (dataset index -> ``(S, D)``, every segment of the image) replaces the
    stored mean patch features (e.g. crop CLS embeddings). ``fill=True`` also gives invalid
    segments their nearest centroid (not used to fit it), so fewer pixels stay unlabelled.
    ``weighted=True`` weighs each segment by its size in patches, so k-means minimises the
    error per patch (as pixels are scored) rather than per segment.
    """
    out_dir = Path(out_dir)
    records = list(store)
    if not records:
        raise ValueError(f"no segments in {store.folder}: run discovery first")
    feats = [
        np.asarray(segment_features[r.index] if segment_features is not None else r.decomposition.segment_features,
                   dtype=np.float32)
        for r in records
    ]
    valid = [r.decomposition.segment_valid for r in records]
    train = np.concatenate([f[v] for f, v in zip(feats, valid)])
    sizes = np.concatenate([r.decomposition.segment_sizes[v] for r, v in zip(records, valid)])
    log.info("k-means: %d valid segments of %d images, k=%d", len(train), len(records), kmeans.k)
    kmeans.fit(train, weights=sizes.astype(np.float32) if weighted else None)
    labels = [kmeans.predict(f) if len(f) else np.zeros(0, dtype=np.int64) for f in feats]
    strict = [np.where(v, lab, -1) for lab, v in zip(labels, valid)]
    final = labels if fill else strict

    folder = out_dir / "labeling"
    kmeans.save(folder / "centroids.npz")
    arrays = {
        "indices": np.array([r.index for r in records], dtype=np.int64),
        "stems": np.array([r.stem for r in records], dtype=str),
        "segment_offsets": np.cumsum([0] + [len(lab) for lab in final]).astype(np.int64),
        "labels": np.concatenate(final).astype(np.int16),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(folder / "assignments.npz", lambda f: f.write(buffer.getvalue()))

    written = write_pseudo_masks(
        out_dir,
        ((r.stem, patch_labels(r.decomposition.segments, lab), r.orig_size) for r, lab in zip(records, final)),
        kmeans.k,
    )
    return {
        "method": "datus",
        "k": kmeans.k,
        "images": len(records),
        "segments_clustered": int(len(train)),
        "kmeans_points_used": kmeans.points_used,
        "kmeans_objective": kmeans.objective,
        "fill": fill,
        "weighted": weighted,
        "coverage": written["coverage"],
        "coverage_without_fill": _pixel_coverage(records, strict) if fill else written["coverage"],
        "cluster_pixels": written["cluster_pixels"],
    }


def label_patches(
    patch_features: dict[int, tuple[str, np.ndarray, tuple[int, ...]]],
    out_dir: str | Path,
    kmeans: KMeans,
) -> dict[str, Any]:
    """The baseline: k-means on every L2-normalised patch feature of the split, masks per patch."""
    out_dir = Path(out_dir)
    order = sorted(patch_features)
    train = np.concatenate([patch_features[i][1] for i in order]).astype(np.float32)
    log.info("k-means on %d patches of %d images, k=%d", len(train), len(order), kmeans.k)
    kmeans.fit(train)
    kmeans.save(out_dir / "labeling" / "centroids.npz")

    def masks():
        for i in order:
            stem, feats, meta = patch_features[i]
            grid, size = meta[:2], meta[2:4]
            yield stem, kmeans.predict(feats.astype(np.float32)).reshape(grid).astype(np.uint8), size

    written = write_pseudo_masks(out_dir, masks(), kmeans.k)
    return {
        "method": "kmeans_patches",
        "k": kmeans.k,
        "images": len(order),
        "patches_clustered": int(len(train)),
        "kmeans_points_used": kmeans.points_used,
        "kmeans_objective": kmeans.objective,
        "coverage": written["coverage"],
        "cluster_pixels": written["cluster_pixels"],
    }
