"""PriMaPs-EM (``method=primaps``, Hahn et al. TMLR 2024) in the harness: see :mod:`datus.primaps`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datus.labeling import Labeler
from datus.labeling.run import ScoresToMask
from datus.masks import save_masks
from datus.methods.base import Job, Method


class PriMaPsMethod(Method):
    """PriMaPs-EM (Hahn et al., TMLR 2024): principal mask proposals per image, class prototypes started by
    k-means (``labeling.kmeans.seed``) and fitted to the proposals by stochastic EM; each pixel takes the
    teacher's most aligned prototype (bilinear logits, or the dense CRF with ``postprocess=crf``)."""

    name = "primaps"
    cache_kind = None

    def __init__(self, **settings) -> None:
        from datus.primaps import PriMaPs

        self.primaps = PriMaPs(**settings)  # every setting is checked here, before any image is read
        self._fitted = None

    def features_read(self) -> dict[str, str]:
        return {"method.features": ",".join(self.primaps.spec.names)}

    def compute(self, job: Job) -> dict[str, Any]:
        self._fitted = self.primaps.fit(job.backbone, job.loop.dataset, backbone_settings=job.backbone_settings,
                                        cache=job.feature_cache, k=job.labeler.k, seed=job.labeler.kmeans.seed)
        return {"primaps": self.primaps.report}

    def scores_to_mask(self, labeler: Labeler, crf, dataset) -> ScoresToMask | None:
        """The CRF on the teacher's logits (PriMaPs' test-time CRF), with each original image."""
        if crf is None:
            return None

        def to_mask(index: int, logits: np.ndarray) -> np.ndarray:
            image = dataset.load(index)["image"].permute(1, 2, 0).numpy()
            return crf(image, torch.as_tensor(logits))

        return to_mask

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        from datus.postprocess import labels_from_scores
        from datus.primaps import PriMaPs

        if self._fitted is None:
            raise RuntimeError("PriMaPsMethod.label before compute")
        index, teacher = self._fitted

        def masks():
            for i in sorted(index.entries):
                logits = PriMaPs.logits(teacher, index, i)
                size = index.orig_size(i)
                mask = labels_from_scores(logits, size) if scores_to_mask is None else scores_to_mask(i, logits)
                yield index.stem(i), mask, size

        written = save_masks(job.out_dir, masks(), job.labeler.k)
        return {"method": self.name, "k": job.labeler.k, "images": len(index), "postprocessed": scores_to_mask is not None,
                "coverage": written["coverage"], "cluster_pixels": written["cluster_pixels"]}
