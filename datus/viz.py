"""The command that draws what a backbone sees: PCA of patch features, CLS attention per head.

``python -m datus.viz attention [--images N] [--out DIR] [overrides of conf/discover.yaml]``
saves the last block's CLS attention per head (as in the DINO paper's figures);
``python -m datus.viz features ...`` a PCA-to-RGB picture of the patch features.
Both help to judge a backbone before running a sweep (``python -m datus.attention`` turns the
attention maps into DINO's masks and scores them against a dataset's thing classes). ``python -m datus.viz feature_head --masks RAW
--masks HEAD feature_head=stego ...`` shows what a feature head changed: the PCA of the raw features beside the PCA of
the head's codes, and the pseudo masks of a run without and one with the head (``pseudo_masks/``
folders), for the first images; the head comes from the cache (trained first if missing).
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
    parser.add_argument("what", choices=("attention", "features", "feature_head"))
    parser.add_argument("--images", type=int, default=4, help="first N images of the split")
    parser.add_argument("--feature", default="tokens", help="features: keys | queries | values | tokens")
    parser.add_argument("--out", type=Path, default=Path("viz"))
    parser.add_argument("--masks", type=Path, action="append", default=[],
                        help="feature_head: a pseudo_masks folder to show beside the features (repeat: without, with the head)")
    parser.add_argument("overrides", nargs="*", help="e.g. backbone=dino_vits8 dataset=camvid dataset.root=DIR")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order
    cfg = compose_config("discover", args.overrides)
    backbone = instantiate(cfg.backbone)
    dataset = instantiate(cfg.dataset, transform=instantiate(cfg.resize))
    if args.what == "feature_head":
        backbone = _with_head(cfg, backbone, dataset, args.out)
    for i in range(min(args.images, len(dataset))):
        item = dataset[i]
        out = backbone(backbone.normalize(item["image"][None]))
        image = item["image"].permute(1, 2, 0).numpy()
        title = f"{item['stem']} ({backbone.name})"
        if args.what == "feature_head":
            from datus.figures import head_figure
            from datus.masks import read_mask

            raw = backbone.input_features[0]
            masks = [(f"{folder.parent.name}", read_mask(folder / f"{item['stem']}.png")) for folder in args.masks
                     if (folder / f"{item['stem']}.png").is_file()]
            fig = head_figure(image, pca_rgb(out.features(raw)[0], out.grid), pca_rgb(out.codes[0], out.grid),
                              masks, title, raw_name=raw)
        elif args.what == "attention":
            if out.attentions is None:
                raise SystemExit(f"{backbone.name} has no attention maps; try `features`")
            attn = out.attentions[0]
            attn = (attn / attn.amax(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(-1, *out.grid).numpy()
            fig = feature_figure(image, pca_rgb(out.features(args.feature)[0], out.grid), attn, title)
        else:
            fig = feature_figure(image, pca_rgb(out.features(args.feature)[0], out.grid), None, title)
        path = save_figure(args.out / args.what / f"{item['stem']}.png", fig)
        print(path)


def _with_head(cfg, backbone, dataset, out):
    """The backbone with the config's feature head (``feature_head=stego``), from the cache or trained now."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from datus.features import FeatureCache

    if cfg.get("feature_head") is None:
        raise ValueError("python -m datus.viz feature_head needs feature_head=stego (and the settings of the run to show)")
    projection = instantiate(cfg.feature_head)
    settings = OmegaConf.to_container(cfg.backbone, resolve=True)  # as the pipeline's cache key has it
    cache = FeatureCache(cfg.cache_dir, out, lambda: instantiate(cfg.trainer, logger=False, default_root_dir=str(out)))
    return projection.attach(backbone, dataset, backbone_settings=settings, resize=dataset.transform, cache=cache)


if __name__ == "__main__":
    from datus.cli.errors import run_command

    run_command(main)
