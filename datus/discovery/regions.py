"""Split communities into connected regions of the patch grid; tiny regions are invalid."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), dtype=bool)}


def connected_regions(
    communities: np.ndarray, connectivity: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected regions of each community on an ``(h, w)`` grid.

    Returns ``regions`` (``(h, w)`` int32, ids 0..R-1 ordered by community, then by scipy's
    raster order) and ``region_community`` (``(R,)`` the community of each region).
    """
    if connectivity not in _STRUCTURES:
        raise ValueError(f"graph.connectivity={connectivity}: choose 4 or 8")
    regions = np.full(communities.shape, -1, dtype=np.int32)
    owners: list[int] = []
    for community in np.unique(communities):
        labelled, count = ndimage.label(communities == community, structure=_STRUCTURES[connectivity])
        inside = labelled > 0
        regions[inside] = labelled[inside] - 1 + len(owners)
        owners.extend([int(community)] * count)
    return regions, np.asarray(owners, dtype=np.int32)


def valid_regions(regions: np.ndarray, min_patches: int) -> np.ndarray:
    """``(R,)`` bool: a region is valid when it has more than ``min_patches`` patches (paper: 5)."""
    if min_patches < 0:
        raise ValueError(f"graph.min_patches={min_patches} must be >= 0")
    sizes = np.bincount(regions.ravel(), minlength=int(regions.max()) + 1)
    return sizes > min_patches
