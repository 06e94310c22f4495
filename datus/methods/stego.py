"""STEGO's read-out (``method=stego``, Hamilton et al. 2022): its cluster probe on a feature head's codes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datus.labeling import Labeler
from datus.labeling.run import ScoresToMask, label_patches
from datus.methods.base import Job
from datus.methods.kmeans_patches import KMeansPatches


class StegoMethod(KMeansPatches):
    """STEGO's read-out (Hamilton et al. 2022) of a feature head's codes (``feature_head=stego``): its cluster probe,
    K cosine centroids trained by minibatch gradient descent on the split's codes (``labeling.kmeans.seed``),
    each patch its most similar centroid; ``postprocess=crf`` feeds ``log_softmax(cosine / temperature)``
    to the dense CRF, as STEGO evaluates (temperature 0.5: STEGO's ``alpha=2``)."""

    name = "stego"
    inductive = False  # its probe is fitted in label(): labeling.centroids is refused

    def __init__(self, *, probe, temperature: float = 0.5) -> None:
        from datus.labeling.probe import ClusterProbe

        super().__init__(patch_feature="codes")
        self.probe = probe if isinstance(probe, ClusterProbe) else ClusterProbe(**probe)
        if float(temperature) <= 0:
            raise ValueError(f"method.temperature={temperature} must be > 0")
        self.temperature = float(temperature)

    def features_read(self) -> dict[str, str]:
        return {f"method={self.name}": "codes"}  # no setting: STEGO's probe always reads the codes

    def scores_to_mask(self, labeler: Labeler, crf, dataset) -> ScoresToMask | None:
        if crf is None:
            return None

        def to_mask(index: int, scores: np.ndarray) -> np.ndarray:
            image = dataset.load(index)["image"].permute(1, 2, 0).numpy()
            return crf(image, torch.from_numpy(np.asarray(scores, dtype=np.float32) / self.temperature))

        return to_mask

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        patches = self.patches()
        kmeans = self.probe.fit(patches, k=job.labeler.k, seed=job.labeler.kmeans.seed)
        summary = label_patches(patches, out_dir=job.out_dir, kmeans=kmeans, scores_to_mask=scores_to_mask, fit=False,
                                settings={"features": job.feature_settings or {}, "fit_on": job.fit_on})
        summary.update(method=self.name, probe=self.probe.report, fitted=True,
                       patches_clustered=self.probe.report["patches"])
        return summary
