"""The pseudo-mask format, shared by discover.py, train.py and evaluate.py.

A mask is a single-channel uint8 PNG at the image's original size, one cluster id per pixel
(0..K-1) and :data:`UNLABELLED` (255) where no cluster was given; ``pseudo_masks_color/`` holds
the same indices as palette PNGs, with ``legend.png`` beside the folder. Label maps are resized with nearest
neighbours only: labels are never interpolated.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from datus.io import atomic_write, save_figure

#: The label of pixels no cluster was given (ground truth's "void" is read as this value too).
UNLABELLED = 255
#: The largest K the format can hold: cluster ids are 0..K-1 and must stay below UNLABELLED.
MAX_CLUSTERS = UNLABELLED


def check_k(k: int, setting: str = "k") -> int:
    """``k`` if the format can hold it (2 <= k <= 255), else a ValueError naming ``setting``."""
    if isinstance(k, bool) or int(k) != k or not 2 <= int(k) <= MAX_CLUSTERS:
        raise ValueError(f"{setting}={k}: K must be an integer from 2 to {MAX_CLUSTERS} "
                         f"(masks are uint8 and {UNLABELLED} means unlabelled)")
    return int(k)


def infer_k(largest_labels: Iterable[int]) -> int:
    """K when none is given: the largest cluster id found in the masks + 1 (at least 2)."""
    return max(2, max((int(v) for v in largest_labels), default=-1) + 1)


def largest_label(mask: np.ndarray) -> int:
    """The largest cluster id of ``mask`` (unlabelled pixels ignored), -1 if it has none."""
    labels = mask[mask != UNLABELLED]
    return int(labels.max()) if labels.size else -1


def upsample_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w[, c])`` array to ``size`` (pixel centres).

    Used for label maps (never interpolate labels) and for blocky patch pictures alike.
    """
    h, w = image.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return image[rows][:, cols]


#: Nearest-neighbour resize of an ``(h, w)`` label map to ``(H, W)`` (pixel centres).
upsample_labels = upsample_nearest


def patch_labels(segments: np.ndarray, segment_labels: np.ndarray) -> np.ndarray:
    """``(h, w)`` uint8 cluster per patch from per-segment labels (negative -> 255 unlabelled)."""
    labels = np.asarray(segment_labels)[segments]
    return np.where(labels < 0, UNLABELLED, labels).astype(np.uint8)


def label_colors(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` uint8 distinct-looking colours (tab20 first, then seeded random)."""
    import matplotlib

    base = (np.array(matplotlib.colormaps["tab20"].colors) * 255).astype(np.uint8)
    if n <= len(base):
        return base[:n]
    extra = np.random.default_rng(seed).integers(40, 255, size=(n - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def palette(k: int) -> np.ndarray:
    """A fixed ``(256, 3)`` palette: clusters 0..k-1 distinct colours, 255 (unlabelled) black."""
    colors = np.zeros((256, 3), dtype=np.uint8)
    colors[:k] = label_colors(k)
    colors[UNLABELLED] = 0
    return colors


def read_mask(path: Path) -> np.ndarray:
    """A single-channel uint8 label PNG as an ``(H, W)`` array; anything else is a ValueError naming it.

    Truncated, empty or garbled files fail here with their path (decoding is forced inside the
    ``try``), never later as a bare ``OSError: image file is truncated``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P"):
                raise ValueError(f"{path}: a mask must be a single-channel uint8 PNG, not mode {image.mode}")
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError as err:
        raise ValueError(f"mask {path} does not exist") from err
    except (OSError, SyntaxError, EOFError, UnidentifiedImageError) as err:
        size = path.stat().st_size if Path(path).is_file() else 0
        what = "the file is empty (0 bytes)" if size == 0 else f"{type(err).__name__}: {err}"
        raise ValueError(f"cannot read mask {path}: {what}; rewrite it (rerun the command that made it) "
                         "or remove it") from err


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

    labels = names or [f"cluster {i}" for i in range(k)]
    handles = [Patch(color=colors[i] / 255, label=labels[i]) for i in range(k)]
    handles.append(Patch(facecolor="black", edgecolor="grey", label="255 unlabelled"))
    fig = plt.figure(figsize=(2.6, 0.3 * len(handles) + 0.4))
    fig.legend(handles=handles, loc="center", frameon=False)
    save_figure(path, fig)


def save_masks(out_dir: Path, masks: Iterable[tuple[str, np.ndarray, tuple[int, int]]], k: int) -> dict:
    """Write ``pseudo_masks/<stem>.png`` and ``pseudo_masks_color/<stem>.png`` at original size, and
    the colours' ``legend.png`` beside them.

    ``masks`` yields ``(stem, labels, (H, W) original size)``: labels per patch ``(h, w)``
    (upsampled here, nearest) or already at the original size. Masks left in those folders by
    an earlier run for images that are no longer in the split are removed: the folders hold
    exactly this split's masks. Returns pixel coverage and cluster sizes.
    """
    colors = palette(k)
    counts = np.zeros(256, dtype=np.int64)
    written: set[str] = set()
    for stem, labels, size in masks:
        written.add(f"{stem}.png")
        mask = labels if labels.shape == tuple(size) else upsample_labels(labels, size)
        save_mask(out_dir / "pseudo_masks" / f"{stem}.png", mask)
        save_color_mask(out_dir / "pseudo_masks_color" / f"{stem}.png", mask, colors)
        counts += np.bincount(mask.ravel(), minlength=256)
    # beside the folders, not in them: an image may be called "legend" (its colour mask was overwritten)
    save_legend(out_dir / "legend.png", k, colors)
    for folder in ("pseudo_masks", "pseudo_masks_color"):
        for stale in (out_dir / folder).glob("*.png"):
            if stale.name not in written:
                stale.unlink()
    total = counts.sum()
    return {
        "coverage": float(1 - counts[UNLABELLED] / total) if total else 0.0,
        "cluster_pixels": counts[:k].tolist(),
        "unlabelled_pixels": int(counts[UNLABELLED]),
    }
