"""Pictures of what a backbone sees: PCA of patch features, CLS attention per head.

``python -m datus.viz attention [--images N] [--out DIR] [overrides of conf/discover.yaml]``
saves the last block's CLS attention per head (as in the DINO paper's figures);
``python -m datus.viz features ...`` a PCA-to-RGB picture of the patch features.
Both help to judge a backbone before running a sweep.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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


def upsample_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w[, c])`` array to ``size`` (pixel centres).

    Used for label maps (never interpolate labels) and for blocky patch pictures alike.
    """
    h, w = image.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return image[rows][:, cols]


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


def main(argv: list[str] | None = None) -> None:
    import argparse
    from pathlib import Path

    from hydra.utils import instantiate

    from datus.io import save_figure
    from datus.utils.compose import compose_config

    parser = argparse.ArgumentParser(prog="python -m datus.viz", description=__doc__)
    parser.add_argument("what", choices=("attention", "features"))
    parser.add_argument("--images", type=int, default=4, help="first N images of the split")
    parser.add_argument("--feature", default="tokens", help="features: keys | queries | values | tokens")
    parser.add_argument("--out", type=Path, default=Path("viz"))
    parser.add_argument("overrides", nargs="*", help="e.g. backbone=dino_vits8 dataset=camvid dataset.root=DIR")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order
    cfg = compose_config("discover", args.overrides)
    backbone = instantiate(cfg.backbone)
    dataset = instantiate(cfg.dataset, transform=instantiate(cfg.resize))
    for i in range(min(args.images, len(dataset))):
        item = dataset[i]
        out = backbone(backbone.normalize(item["image"][None]))
        image = item["image"].permute(1, 2, 0).numpy()
        title = f"{item['stem']} ({backbone.name})"
        if args.what == "attention":
            if out.attentions is None:
                raise SystemExit(f"{backbone.name} has no attention maps; try `features`")
            attn = out.attentions[0]
            attn = (attn / attn.amax(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(-1, *out.grid).numpy()
            fig = feature_figure(image, pca_rgb(out.features(args.feature)[0], out.grid), attn, title)
        else:
            fig = feature_figure(image, pca_rgb(out.features(args.feature)[0], out.grid), None, title)
        path = save_figure(args.out / args.what / f"{item['stem']}.png", fig)
        print(path)


if __name__ == "__main__":
    main()
