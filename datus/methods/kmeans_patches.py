"""The patch baseline (``method=kmeans_patches``): k-means on every patch feature, no graph."""

from __future__ import annotations

import time
from typing import Any

from datus.features import FeatureSpec
from datus.labeling.run import ScoresToMask
from datus.methods.base import Job, Method
from datus.shards import ArrayRecord


class KMeansPatches(Method):
    """The baseline every paper reports: k-means on the L2-normalised patch features, no graph. The
    features come from the shared feature cache (:class:`~datus.features.FeatureCache`)."""

    name = "kmeans_patches"
    cache_kind = None
    inductive = True

    def __init__(self, *, patch_feature: str = "tokens") -> None:
        self.patch_feature = patch_feature
        self._index = None

    def features_read(self) -> dict[str, str]:
        return {"method.patch_feature": self.patch_feature}

    def compute(self, job: Job) -> dict[str, Any]:
        before = time.perf_counter()
        self._index = job.feature_cache.index(job.loop.dataset, backbone=lambda: job.backbone,
                                              backbone_settings=job.backbone_settings, resize=job.loop.dataset.transform,
                                              spec=FeatureSpec(names=(self.patch_feature,), normalized=True))
        return {"patch_features_computed_this_run": self._index.computed_this_run,
                "patch_features_seconds": round(time.perf_counter() - before, 3),
                "patch_features_dir": str(self._index.folder)}

    def patches(self) -> dict[int, ArrayRecord]:
        if self._index is None:
            raise RuntimeError(f"{type(self).__name__}.label before compute")
        return self._index.records()

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        summary = job.labeler.label_patches(self.patches(), job.out_dir, scores_to_mask,
                                            features=job.feature_settings, fit_on=job.fit_on)
        summary["patch_feature"] = self.patch_feature
        return summary
