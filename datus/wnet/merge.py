"""W-Net's second post-processing step: regions too small to be objects are merged into a neighbour.

The paper merges regions hierarchically by contour strength (gPb-owt-ucm); this is the simple
form of the same idea: every connected region (8-connected) of fewer than ``min_pixels`` pixels
takes the label that borders it most, smallest regions first, until none is left or ``passes``
run out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["merge_small_regions"]

_EIGHT = np.ones((3, 3), dtype=bool)


def merge_small_regions(labels: np.ndarray, min_pixels: int, passes: int = 3) -> np.ndarray:
    """``(H, W)`` integer labels with every region below ``min_pixels`` merged into its main neighbour."""
    if min_pixels <= 1:
        return labels
    out = labels.copy()
    for _ in range(passes):
        changed = False
        for value in np.unique(out):
            regions, count = ndimage.label(out == value, structure=_EIGHT)
            if not count:
                continue
            sizes = np.bincount(regions.ravel())
            small = [r for r in np.argsort(sizes) if r and sizes[r] < min_pixels]
            boxes = ndimage.find_objects(regions)
            for region in small:
                ys, xs = boxes[region - 1]
                ys = slice(max(ys.start - 1, 0), ys.stop + 1)
                xs = slice(max(xs.start - 1, 0), xs.stop + 1)
                inside = regions[ys, xs] == region
                border = ndimage.binary_dilation(inside, structure=_EIGHT) & ~inside
                around = out[ys, xs][border]
                around = around[around != value]
                if around.size:
                    out[ys, xs][inside] = np.bincount(around).argmax()
                    changed = True
        if not changed:
            break
    return out
