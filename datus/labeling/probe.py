"""STEGO's cluster probe (Hamilton et al. 2022): cosine k-means trained by minibatch gradient descent.

K centroids, drawn at random (seeded), are moved by Adam to raise every feature's largest cosine
similarity to them (minus its mean over a minibatch is the loss), as STEGO trains its probe on its
head's codes. The result is a spherical :class:`~datus.labeling.kmeans.KMeans` holding the
centroids, so it labels, scores and saves like any other clustering.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from datus.labeling.kmeans import KMeans, _whole
from datus.shards import ArrayRecord


class ClusterProbe:
    """``steps`` Adam steps (``lr``) on minibatches of ``batch_size`` L2-normalised features."""

    def __init__(self, *, steps: int = 2000, batch_size: int = 4096, lr: float = 5e-3) -> None:
        self.steps = _whole("method.probe.steps", steps, 1)
        self.batch_size = _whole("method.probe.batch_size", batch_size, 1)
        if float(lr) <= 0:
            raise ValueError(f"method.probe.lr={lr} must be > 0")
        self.lr = float(lr)
        self.report: dict = {}

    def fit(self, patches: Mapping[int, ArrayRecord], *, k: int, seed: int) -> KMeans:
        """The probe trained on every row of ``patches`` (the split's per-patch features)."""
        x = F.normalize(torch.from_numpy(np.concatenate([patches[i].rows for i in sorted(patches)]).astype(np.float32)),
                        dim=1)
        kmeans = KMeans(k, seed=seed, spherical=True, center=False, overcluster=1)
        if len(x) < kmeans.k:
            raise ValueError(f"the cluster probe with k={kmeans.k} needs at least {kmeans.k} patches, got {len(x)}")
        generator = torch.Generator().manual_seed(int(seed))
        centroids = torch.randn(kmeans.k, x.shape[1], generator=generator).requires_grad_(True)
        optimizer = torch.optim.Adam([centroids], lr=self.lr)
        losses = []
        for _ in range(self.steps):
            batch = x[torch.randint(len(x), (min(self.batch_size, len(x)),), generator=generator)]
            loss = -(batch @ F.normalize(centroids, dim=1).T).max(dim=1).values.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        kmeans.centroids = F.normalize(centroids.detach(), dim=1).numpy()
        kmeans.points_used = len(x)
        kmeans.objective = -float(np.mean(losses[-50:]))
        self.report = {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "patches": len(x),
                       "first_loss": losses[0], "final_loss": float(np.mean(losses[-50:]))}
        return kmeans
