"""The command that draws what a backbone sees: PCA of patch features, CLS attention per head.

``python -m datus.viz attention [--images N] [--out DIR] [overrides of conf/discover.yaml]``
saves the last block's CLS attention per head (as in the DINO paper's figures);
``python -m datus.viz features ...`` a PCA-to-RGB picture of the patch features.
Both help to judge a backbone before running a sweep.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    import argparse
    from pathlib import Path

    from hydra.utils import instantiate

    from datus.cli.compose import compose_config
    from datus.figures import feature_figure, pca_rgb
    from datus.io import save_figure

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
    from datus.cli.errors import run_command

    run_command(main)
