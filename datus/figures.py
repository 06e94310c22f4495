"""Every picture the product draws (matplotlib; saved with :func:`datus.io.save_figure`).

What a backbone sees (feature PCA, CLS attention per head), a scene decomposition (communities,
valid segments) and an evaluation (matched confusion matrix; image | truth | prediction).
Drawing only: nothing here reads a dataset, runs a model or knows a pipeline stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from datus.masks import UNLABELLED, label_colors, palette, upsample_nearest


def pca_rgb(features: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Project ``(N, D)`` patch features on their first 3 principal components as an RGB image.

    Each component is scaled to [0, 255] between its 1st and 99th percentile, so one outlier
    patch does not wash the picture out. Returns ``(h, w, 3)`` uint8.
    """
    x = features.float()
    x = x - x.mean(dim=0, keepdim=True)
    q = min(3, x.shape[0], x.shape[1])
    _, _, v = torch.pca_lowrank(x, q=q, center=False, niter=4)
    proj = x @ v[:, :q]
    if q < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - q)], dim=1)
    lo = torch.quantile(proj, 0.01, dim=0)
    hi = torch.quantile(proj, 0.99, dim=0)
    proj = ((proj - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return (proj.reshape(*grid, 3).numpy() * 255).round().astype(np.uint8)


def colorize(labels: np.ndarray, invalid: int | None = None) -> np.ndarray:
    """Colour an integer map; ``invalid`` (e.g. -1) is drawn dark grey."""
    valid = labels >= 0 if invalid is None else labels != invalid
    colors = label_colors(int(labels[valid].max()) + 1 if valid.any() else 1)
    out = np.full((*labels.shape, 3), 40, dtype=np.uint8)
    out[valid] = colors[labels[valid]]
    return out


def decomposition_figure(image: np.ndarray, dec, title: str = "", mask: np.ndarray | None = None, k: int | None = None):
    """Matplotlib figure: photo | communities | valid segments (invalid ones dark grey) | and, when
    given, the final pseudo ``mask`` (``k`` cluster colours, unlabelled black) at the image's size."""
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
    if mask is not None:
        colors = np.vstack([palette(k or int(mask[mask != UNLABELLED].max(initial=0)) + 1), np.zeros((1, 3))])
        shown = np.where(mask == UNLABELLED, len(colors) - 1, mask)
        panels.append((upsample_nearest(colors[shown].astype(np.uint8), size), "pseudo mask"))
    aspect = size[0] / size[1]
    fig, axes = plt.subplots(1, len(panels), figsize=(10 / 3 * len(panels), 10 / 3 * aspect + 0.5))
    for ax, (picture, name) in zip(axes, panels):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def feature_figure(
    image: np.ndarray,
    pca: np.ndarray,
    attentions: np.ndarray | None,
    title: str = "",
):
    """A matplotlib figure: the photo, its feature PCA and the CLS attention of each head."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    heads = 0 if attentions is None else attentions.shape[0]
    panels = 2 + heads
    cols = min(panels, 4)
    rows = -(-panels // cols)
    aspect = image.shape[0] / image.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * aspect * rows + 0.4 * rows))
    axes = np.atleast_1d(axes).ravel()
    axes[0].imshow(image)
    axes[0].set_title(title or "image", fontsize=9)
    axes[1].imshow(upsample_nearest(pca, image.shape[:2]))
    axes[1].set_title("patch features (PCA)", fontsize=9)
    for h in range(heads):
        axes[2 + h].imshow(upsample_nearest(attentions[h], image.shape[:2]), cmap="inferno")
        axes[2 + h].set_title(f"CLS attention, head {h}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def head_figure(image: np.ndarray, pca_raw: np.ndarray, pca_codes: np.ndarray,
                masks: list[tuple[str, np.ndarray]] = (), title: str = "", raw_name: str = "keys"):
    """What a feature head changed on one image: photo | PCA of the raw features | PCA of the codes |
    the pseudo masks given (e.g. of a run without and one with the head), in cluster colours."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    size = image.shape[:2]
    panels = [(image, title or "image"), (upsample_nearest(pca_raw, size), f"{raw_name} (PCA)"),
              (upsample_nearest(pca_codes, size), "head codes (PCA)")]
    for name, mask in masks:
        panels.append((palette(int(mask[mask != UNLABELLED].max(initial=0)) + 1)[mask], name))
    aspect = size[0] / size[1]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2 * aspect + 0.5))
    for ax, (picture, name) in zip(np.atleast_1d(axes), panels):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def map_clusters(pred: np.ndarray, result: dict[str, Any], class_names: list[str]) -> np.ndarray:
    """Replace cluster ids by their Hungarian-matched class ids (unmatched/unlabelled -> 255)."""
    lut = np.full(256, UNLABELLED, dtype=np.uint8)
    index = {name: i for i, name in enumerate(class_names)}
    for cluster, name in result["matching"]["cluster_to_class"].items():
        if name is not None:
            lut[int(cluster)] = index[name]
    return lut[pred]


def confusion_figure(result: dict[str, Any], class_names: list[str]):
    """Row-normalised (per ground-truth class) matched confusion matrix with class names."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    matched = np.array(result["matched_confusion"], dtype=np.float64)  # (C+1 predicted, C truth)
    norm = matched.T / np.maximum(matched.sum(axis=0)[:, None], 1)  # rows: truth
    c = len(class_names)
    fig, ax = plt.subplots(figsize=(0.55 * c + 2.5, 0.5 * c + 1.8))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c + 1), [*class_names, "wrong /\nunlabelled"], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(c), class_names, fontsize=8)
    ax.set_xlabel("prediction (after Hungarian matching)")
    ax.set_ylabel("ground truth")
    for i in range(c):
        for j in range(c + 1):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"mIoU {100 * result['miou']:.1f}  pixel acc. {100 * result['pixel_accuracy']:.1f}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def samples_figure(samples: list[dict[str, np.ndarray]], result: dict[str, Any], class_names: list[str]):
    """Grid: image | ground truth | prediction after matching, in one class palette."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colors = palette(len(class_names))  # classes take the clusters' colours
    rows = max(len(samples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(10, 2.6 * rows), squeeze=False)
    for r, s in enumerate(samples):
        for ax, picture, title in zip(
            axes[r],
            (s["image"], colors[s["truth"].clip(0, 255).astype(np.uint8)],
             colors[map_clusters(s["pred"], result, class_names)]),
            (s["stem"], "ground truth", "prediction (matched)"),
        ):
            ax.imshow(picture)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


def attention_mask_figure(image: np.ndarray, attentions: np.ndarray, masks: np.ndarray,
                          things: np.ndarray | None = None, title: str = "", mass: float = 0.6):
    """DINO's figure for one image: each head's CLS attention (top row) and the mask keeping ``mass``
    of it over the photo (bottom row); the first column is the photo and, if given, the things."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    heads, size = attentions.shape[0], image.shape[:2]
    aspect = size[0] / size[1]
    fig, axes = plt.subplots(2, heads + 1, figsize=(2.6 * (heads + 1), 2 * (2.6 * aspect + 0.35)), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title(title or "image", fontsize=8)
    shown = image.copy()
    if things is not None:
        shown[~things] = (shown[~things] * 0.25).astype(np.uint8)
    axes[1, 0].imshow(shown)
    axes[1, 0].set_title("things (ground truth)" if things is not None else "image", fontsize=8)
    for h in range(heads):
        axes[0, h + 1].imshow(upsample_nearest(attentions[h], size), cmap="inferno")
        axes[0, h + 1].set_title(f"head {h}", fontsize=8)
        keep = upsample_nearest(masks[h].astype(np.uint8), size).astype(bool)
        overlay = image.copy()
        overlay[~keep] = (overlay[~keep] * 0.25).astype(np.uint8)
        axes[1, h + 1].imshow(overlay)
        axes[1, h + 1].set_title(f"head {h}: {mass:.0%} of the attention", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig
