"""DatUS² steps 4-6 as one object (``conf/labeling``): segment features, k-means, fill, weighting.

A :class:`Labeler` is built once from its config and handed to the pipeline; every method
labels through it (segments for DatUS², patches for the baseline), so a labelling setting
has one home whatever produced the features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datus.backbones import Backbone
from datus.discovery.store import SegmentLookup, SegmentStore
from datus.labeling.embed import SegmentEmbedder
from datus.labeling.inductive import check_centroids, load_centroids
from datus.labeling.kmeans import KMeans
from datus.labeling.run import ScoresToMask, label_patches, run_labeling
from datus.masks import check_k
from datus.runs import job_lock, settings_key
from datus.shards import ArrayLookup, ArrayRecord, ArrayStore, PredictLoop

#: How a segment is described for k-means: its mean patch feature, or its crop's CLS embedding.
SEGMENT_FEATURES = ("mean", "crop")
CROP_BACKGROUNDS = ("black", "mean")


class Labeler:
    """K clusters over a split's segment (or patch) features, written as pseudo masks.

    ``kmeans`` builds the clusterer for ``k`` (a partial :class:`KMeans`, so K is given once).
    ``features="mean"`` clusters each segment's mean patch feature stored by discovery;
    ``"crop"`` the CLS embedding of its masked, square-padded crop (the paper) by ``extractor``
    (default: the discovery backbone), a second backbone pass kept beside the segments.
    ``fill`` labels invalid segments from their nearest centroid; ``weighted`` weighs each
    segment by its size in k-means. ``score_temperature`` divides the per-patch cluster scores
    when a dense CRF makes the masks (:meth:`scores_to_mask`). ``centroids`` (a run's
    ``labeling/centroids.npz``) labels the split with another run's clusters instead of fitting its
    own (inductive: fit on train, label val); its features must be this run's
    (:meth:`check_centroids`).
    """

    def __init__(
        self,
        *,
        k: int,
        kmeans: Callable[..., KMeans] = KMeans,
        features: str = "mean",
        fill: bool = True,
        weighted: bool = True,
        crop_size: int = 224,
        crop_background: str = "black",
        extractor: Backbone | None = None,
        score_temperature: float = 0.05,
        centroids: str | Path | None = None,
    ) -> None:
        if features not in SEGMENT_FEATURES:
            raise ValueError(f"labeling.features={features!r}: choose one of {SEGMENT_FEATURES}")
        if crop_background not in CROP_BACKGROUNDS:
            raise ValueError(f"labeling.crop_background={crop_background!r}: choose one of {CROP_BACKGROUNDS}")
        if score_temperature <= 0:
            raise ValueError(f"labeling.score_temperature={score_temperature} must be > 0")
        self.kmeans = kmeans(k=k) if centroids is None else load_centroids(centroids, k=k)
        self.centroids = None if centroids is None else Path(centroids).expanduser()
        check_k(self.kmeans.k, "k")  # masks are uint8 with 255 = unlabelled: K <= 255, refused before any work
        self.features, self.fill, self.weighted = features, bool(fill), bool(weighted)
        self.crop_size, self.crop_background = int(crop_size), crop_background
        self.extractor, self.score_temperature = extractor, float(score_temperature)

    @property
    def k(self) -> int:
        return self.kmeans.k

    def feature_settings(self) -> dict[str, Any]:
        """The labelling settings that change the clustered features (what ``centroids.npz`` records)."""
        settings: dict[str, Any] = {"labeling.features": self.features}
        if self.features == "crop":
            extractor = self.extractor
            settings.update({"labeling.crop_size": self.crop_size, "labeling.crop_background": self.crop_background,
                             "labeling.extractor": None if extractor is None else
                             [extractor.name, getattr(extractor, "weights_source", None)]})
        return settings

    def check_centroids(self, features: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
        """With ``centroids``: refuse them unless they were fitted on ``features`` (see
        :func:`datus.labeling.inductive.feature_settings`); nothing to check otherwise."""
        if self.centroids is not None:
            check_centroids(self.kmeans, self.centroids, features, skip=skip)

    def _crop_store(self, backbone: Backbone, work: Path, segments: SegmentStore) -> ArrayStore:
        source = self.extractor or backbone
        key = {"extractor": source.name, "weights": getattr(source, "weights_source", None),
               "crop_size": self.crop_size, "background": self.crop_background, "all_segments": self.fill}
        return ArrayStore(work / "crop_features" / settings_key(key), manifest=segments.manifest)

    def embed_segments(self, backbone: Backbone, loop: PredictLoop, segments: SegmentStore, work: Path,
                       rank: int = 0) -> None:
        """The crop-feature pass (``features="crop"``; nothing for ``"mean"``): every rank runs it."""
        if self.features != "crop":
            return
        records = SegmentLookup(segments)
        store = self._crop_store(backbone, work, segments)
        embedder = SegmentEmbedder(self.extractor or backbone, records, backbone.patch_size, self.crop_size,
                                   self.crop_background, all_segments=self.fill)
        with job_lock(work / f".lock-crops-rank{rank}", f"segment crops in {store.folder}"):
            loop.run(embedder, store, indices=records.indices())

    def _recorded(self, features: dict[str, Any] | None, fit_on: dict[str, Any] | None) -> dict[str, Any]:
        """What ``centroids.npz`` records: the features' settings and the split the centroids were fitted on."""
        if self.centroids is not None:
            return {**(self.kmeans.settings or {}), "labelled_with": str(self.centroids)}
        return {"features": features or {}, "fit_on": fit_on}

    def _inductive(self, summary: dict[str, Any]) -> dict[str, Any]:
        if self.centroids is not None:
            summary.update(centroids=str(self.centroids), fit_on=(self.kmeans.settings or {}).get("fit_on"))
        return summary

    def label_segments(self, backbone: Backbone, segments: SegmentStore, work: Path, out_dir: Path,
                       scores_to_mask: ScoresToMask | None = None, *, features: dict[str, Any] | None = None,
                       fit_on: dict[str, Any] | None = None) -> dict[str, Any]:
        """k-means over the segments (after :meth:`embed_segments`), or the given ``centroids``; pseudo
        masks into ``out_dir``. ``features`` and ``fit_on`` (the split) are recorded in ``centroids.npz``."""
        crops = ArrayLookup(self._crop_store(backbone, work, segments)) if self.features == "crop" else None
        summary = run_labeling(segments, out_dir=out_dir, kmeans=self.kmeans, segment_features=crops,
                               fill=self.fill, weighted=self.weighted, scores_to_mask=scores_to_mask,
                               fit=self.centroids is None, settings=self._recorded(features, fit_on))
        summary["segment_features"] = self.features
        return self._inductive(summary)

    def label_patches(self, patches: Mapping[int, ArrayRecord], out_dir: Path,
                      scores_to_mask: ScoresToMask | None = None, *, features: dict[str, Any] | None = None,
                      fit_on: dict[str, Any] | None = None) -> dict[str, Any]:
        """k-means over every patch feature (the baseline), or the given ``centroids``; pseudo masks into
        ``out_dir``."""
        return self._inductive(label_patches(patches, out_dir=out_dir, kmeans=self.kmeans,
                                             scores_to_mask=scores_to_mask, fit=self.centroids is None,
                                             settings=self._recorded(features, fit_on)))

    def scores_to_mask(self, crf, dataset) -> ScoresToMask | None:
        """Masks from per-patch cluster scores through ``crf`` (e.g. :class:`datus.postprocess.DenseCRF`)
        with each original image; None without a CRF. Scores (cosine similarities to the centroids,
        within [-1, 1]) divided by ``score_temperature`` are the CRF's logits."""
        if crf is None:
            return None

        def to_mask(index: int, scores: np.ndarray) -> np.ndarray:
            image = dataset.load(index)["image"].permute(1, 2, 0).numpy()
            return crf(image, torch.from_numpy(np.asarray(scores, dtype=np.float32) / self.score_temperature))

        return to_mask
