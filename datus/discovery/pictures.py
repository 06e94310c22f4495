"""Pictures of a decomposition: the photo, its communities and its valid segments side by side."""

from __future__ import annotations

import numpy as np

from datus.discovery.decompose import Decomposition
from datus.viz import upsample_nearest


def label_colors(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` uint8 distinct-looking colours (tab20 first, then seeded random)."""
    import matplotlib

    base = (np.array(matplotlib.colormaps["tab20"].colors) * 255).astype(np.uint8)
    if n <= len(base):
        return base[:n]
    extra = np.random.default_rng(seed).integers(40, 255, size=(n - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def colorize(labels: np.ndarray, invalid: int | None = None) -> np.ndarray:
    """Colour an integer map; ``invalid`` (e.g. -1) is drawn dark grey."""
    valid = labels >= 0 if invalid is None else labels != invalid
    colors = label_colors(int(labels[valid].max()) + 1 if valid.any() else 1)
    out = np.full((*labels.shape, 3), 40, dtype=np.uint8)
    out[valid] = colors[labels[valid]]
    return out


def decomposition_figure(image: np.ndarray, dec: Decomposition, title: str = ""):
    """Matplotlib figure: photo | communities | valid segments (invalid ones dark grey)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    segments = np.where(dec.segment_valid[dec.segments], dec.segments, -1)
    size = image.shape[:2]
    panels = [
        (image, title or "image"),
        (upsample_nearest(colorize(dec.communities), size), f"{dec.communities.max() + 1} communities"),
        (upsample_nearest(colorize(segments, invalid=-1), size),
         f"{dec.num_valid} valid of {dec.segment_valid.size} segments"),
    ]
    aspect = size[0] / size[1]
    fig, axes = plt.subplots(1, 3, figsize=(10, 10 / 3 * aspect + 0.5))
    for ax, (picture, name) in zip(axes, panels):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
