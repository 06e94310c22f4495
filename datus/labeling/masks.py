"""Pseudo masks: each patch takes its segment's cluster; nearest-neighbour upsampling, never linear."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datus.io import atomic_write
from datus.metrics import UNLABELLED
from datus.viz import upsample_nearest

#: Nearest-neighbour resize of an ``(h, w)`` label map to ``(H, W)`` (pixel centres).
upsample_labels = upsample_nearest


def patch_labels(segments: np.ndarray, segment_labels: np.ndarray) -> np.ndarray:
    """``(h, w)`` uint8 cluster per patch from per-segment labels (negative -> 255 unlabelled)."""
    labels = np.asarray(segment_labels)[segments]
    return np.where(labels < 0, UNLABELLED, labels).astype(np.uint8)


def palette(k: int) -> np.ndarray:
    """A fixed ``(256, 3)`` palette: clusters 0..k-1 distinct colours, 255 (unlabelled) black."""
    from datus.discovery.pictures import label_colors

    colors = np.zeros((256, 3), dtype=np.uint8)
    colors[:k] = label_colors(k)
    colors[UNLABELLED] = 0
    return colors


def read_mask(path: Path) -> np.ndarray:
    """A single-channel uint8 label PNG as an ``(H, W)`` array; anything else is an error."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(f"{path}: a mask must be a single-channel uint8 PNG, not mode {image.mode}")
        return np.array(image, dtype=np.uint8)


def save_mask(path: Path, mask: np.ndarray) -> None:
    """uint8 single-channel PNG, written atomically."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8), mode="L")
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_color_mask(path: Path, mask: np.ndarray, colors: np.ndarray) -> None:
    """Palette PNG: its indices are exactly the label mask, its colours the fixed palette."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(colors.reshape(-1).tolist())
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_legend(path: Path, k: int, colors: np.ndarray, names: list[str] | None = None) -> None:
    """A small picture naming each cluster's colour (and 255 = unlabelled)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from datus.io import save_figure

    labels = names or [f"cluster {i}" for i in range(k)]
    handles = [Patch(color=colors[i] / 255, label=labels[i]) for i in range(k)]
    handles.append(Patch(facecolor="black", edgecolor="grey", label="255 unlabelled"))
    fig = plt.figure(figsize=(2.6, 0.3 * len(handles) + 0.4))
    fig.legend(handles=handles, loc="center", frameon=False)
    save_figure(path, fig)
