"""PriMaPs' principal mask proposals of one image, from its frozen patch features (Hahn et al., TMLR 2024).

Each proposal is the set of patches whose features agree with one principal direction of the
image's not-yet-covered features: the first principal component of those features is snapped to
the real feature most aligned with it (so the direction is a patch's, not an average's), and
every uncovered patch whose cosine to it is at least ``threshold`` times the largest becomes the
mask. This repeats until ``coverage`` of the patches are covered or the covered set stops
changing for ``patience`` rounds. The masks are median filtered (3x3), patches no mask covers are
background, and a dense CRF snaps the proposals to the image's edges.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: the label of background (no proposal) in a proposal map, as in a pseudo mask
BACKGROUND = 255


def check_threshold(threshold: float, setting: str = "method.threshold") -> float:
    """``threshold`` if it is in (0, 1], else a ValueError naming ``setting``."""
    if isinstance(threshold, bool) or not 0 < float(threshold) <= 1:
        raise ValueError(f"{setting}={threshold}: the cosine threshold (a fraction of the largest) must be in (0, 1]")
    return float(threshold)


@torch.no_grad()
def principal_masks(features: Tensor, *, threshold: float = 0.4, coverage: float = 0.95, patience: int = 3,
                    pca_iterations: int = 20, max_masks: int = 256) -> Tensor:
    """``(M, N)`` boolean masks of an image's ``(N, D)`` patch features, in the order they were found.

    ``pca_iterations`` of the randomised PCA (``torch.pca_lowrank``, seeded: the same features give
    the same masks); ``max_masks`` bounds the loop on pathological inputs."""
    threshold = check_threshold(threshold)
    x = features.float()
    unit = F.normalize(x, dim=1)
    free = torch.ones(len(x), dtype=torch.bool)
    masks: list[Tensor] = []
    history: list[int] = []
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)  # pca_lowrank draws a random projection: fixed, so proposals are a function of the features
    try:
        while free.float().mean() > 1 - coverage and len(masks) < max_masks:
            remaining = x[free]
            if len(remaining) < 2:
                direction = F.normalize(remaining[0], dim=0)
            else:
                _, _, v = torch.pca_lowrank(remaining, q=1, center=True, niter=pca_iterations)
                direction = v[:, 0]
            candidates = unit[free]
            cosine = candidates @ direction
            if -cosine.min() > cosine.max():  # a principal direction's sign is arbitrary: take its stronger end
                cosine = -cosine
            anchor = candidates[int(cosine.argmax())]  # snapped to the real feature most aligned with it
            similarity = unit @ anchor
            mask = free & (similarity >= threshold * similarity[free].max())
            masks.append(mask)
            free &= ~mask
            history.append(int(free.sum()))
            if len(history) >= patience and len(set(history[-patience:])) == 1:
                break
    finally:
        torch.set_rng_state(generator_state)
    return torch.stack(masks) if masks else torch.zeros(0, len(x), dtype=torch.bool)


def median_filter(masks: Tensor, grid: tuple[int, int], size: int = 3) -> Tensor:
    """Each ``(M, h*w)`` mask median filtered on its ``(h, w)`` grid (reflect padding): lone patches drop,
    holes close. Returns ``(M, h, w)`` booleans."""
    m = masks.float().reshape(-1, 1, *grid)
    pad = size // 2
    padded = F.pad(m, (pad, pad, pad, pad), mode="reflect") if min(grid) > pad else F.pad(m, (pad,) * 4, mode="replicate")
    windows = padded.unfold(2, size, 1).unfold(3, size, 1).reshape(*m.shape[:2], *grid, size * size)
    return windows.median(dim=-1).values[:, 0] > 0.5


def proposal_logits(masks: Tensor) -> Tensor:
    """``(M + 1, h, w)`` scores for the CRF: background first (where no mask is), then each mask (0 or 1)."""
    background = ~masks.any(dim=0, keepdim=True)
    return torch.cat([background, masks]).float()


def proposal_map(masks: Tensor, size: tuple[int, int], image: np.ndarray | None = None, crf=None) -> np.ndarray:
    """``(H, W)`` uint8 proposal ids (0..M-1; :data:`BACKGROUND` where none) at ``size``: the dense CRF with
    the image snaps the ``(M, h, w)`` masks to its edges, else nearest-neighbour upsampling."""
    from datus.masks import upsample_nearest

    if len(masks) == 0:
        return np.full(size, BACKGROUND, dtype=np.uint8)
    if len(masks) >= BACKGROUND:
        raise ValueError(f"{len(masks)} proposals do not fit a uint8 map with {BACKGROUND} as background")
    if crf is not None:
        labels = crf(image, proposal_logits(masks)).astype(np.int64)
    else:
        labels = upsample_nearest(proposal_logits(masks).argmax(dim=0).numpy(), size)
    return np.where(labels == 0, BACKGROUND, labels - 1).astype(np.uint8)


def majority_vote(labels: Tensor, proposals: Tensor, k: int) -> Tensor:
    """Pseudo labels: each proposal's pixels take the label most of them have in ``labels`` (ties: the
    smallest); background (:data:`BACKGROUND`) stays background. ``labels`` and ``proposals`` are ``(H, W)``.
    (NumPy: on a CPU its bincount is an order of magnitude faster than torch's for maps this small.)"""
    ids = proposals.cpu().numpy().astype(np.int64)
    votes_of = labels.cpu().numpy().astype(np.int64)
    inside = ids != BACKGROUND
    if not inside.any():
        return torch.full(ids.shape, BACKGROUND, dtype=torch.long, device=labels.device)
    count = int(ids[inside].max()) + 1
    votes = np.bincount(ids[inside] * k + votes_of[inside], minlength=count * k).reshape(count, k)
    winner = votes.argmax(axis=1)  # first maximum: the smallest label on ties
    voted = np.where(inside, winner[np.minimum(ids, count - 1)], BACKGROUND)
    return torch.from_numpy(voted).to(labels.device)


def vote_kept(labels: Tensor, proposals: Tensor, k: int) -> tuple[int, int, np.ndarray]:
    """What the majority vote keeps of a labelling: ``(pixels inside proposals whose label it keeps, pixels
    inside proposals, (K,) pixels per label after the vote)``. A proposal that spans several labels keeps
    only its majority's pixels, so coarse proposals show as a low share kept (first / second) and as labels
    left with no pixel, which the EM can then never learn. No ground truth is read."""
    voted = majority_vote(labels, proposals, k)
    inside = voted != BACKGROUND
    kept = int((voted[inside] == labels[inside]).sum())
    return kept, int(inside.sum()), np.bincount(voted[inside].cpu().numpy(), minlength=k)[:k]
