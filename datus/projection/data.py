"""What the projection head trains on: sampled patches of an image and of one of its nearest neighbours.

Everything reads the cached frozen feature maps one image at a time (a memory-mapped
:class:`datus.features.FeatureIndex`), so memory does not grow with the split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["PairedPatches", "nearest_images", "sample_patches", "split_mean"]


def _map(index, i: int) -> Tensor:
    return torch.from_numpy(np.array(index[i], dtype=np.float32))  # (D, h, w)


def split_mean(index, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The mean patch feature of the split ``(D,)`` and each image's mean patch feature ``(N, D)``."""
    total, count, pooled = None, 0, []
    for i in indices:
        fmap = _map(index, i)
        sums = fmap.sum(dim=(1, 2), dtype=torch.float64)
        total = sums if total is None else total + sums
        count += fmap.shape[1] * fmap.shape[2]
        pooled.append((sums / (fmap.shape[1] * fmap.shape[2])).float())
    if total is None:
        raise ValueError("the split has no images to train the projection head on")
    return (total / count).float(), torch.stack(pooled)


def nearest_images(pooled: Tensor, center: Tensor, k: int, chunk: int = 4096) -> Tensor:
    """``(N, k)`` the ``k`` most similar other images of each image (cosine of centred mean features).

    Computed a block of rows at a time: memory is ``chunk x N``, not ``N x N``.
    """
    n = pooled.shape[0]
    if n < 2:
        raise ValueError("the projection head pairs each image with its nearest neighbours: the split needs "
                         "at least 2 images")
    k = min(int(k), n - 1)
    x = F.normalize(pooled - center, dim=1)
    out = []
    for start in range(0, n, chunk):
        sim = x[start:start + chunk] @ x.T
        rows = torch.arange(start, min(start + chunk, n))
        sim[rows - start, rows] = -float("inf")  # never its own neighbour
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


def sample_patches(fmap: Tensor, samples: int) -> Tensor:
    """``samples x samples`` features at uniformly random positions of a ``(D, h, w)`` map (bilinear), ``(S*S, D)``."""
    coords = torch.rand(1, samples, samples, 2) * 2 - 1
    picked = F.grid_sample(fmap[None], coords, mode="bilinear", align_corners=True)  # (1, D, S, S)
    return picked[0].flatten(1).T


class PairedPatches(Dataset):
    """Item ``j``: sampled patches of image ``indices[j]`` and of one of its ``neighbours[j]``, drawn anew each time."""

    def __init__(self, index, indices: Sequence[int], neighbours: Tensor, samples: int = 11) -> None:
        if samples < 2:
            raise ValueError(f"feature_head.samples={samples} must be >= 2 (patches per side sampled from each image)")
        self.index, self.indices, self.neighbours, self.samples = index, list(indices), neighbours, int(samples)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Tensor]:
        partner = self.indices[int(self.neighbours[j, torch.randint(self.neighbours.shape[1], ()).item()])]
        return {"feats": sample_patches(_map(self.index, self.indices[j]), self.samples),
                "feats_knn": sample_patches(_map(self.index, partner), self.samples)}
