"""Entry point: the DatUS² pipeline on a dataset split (python discover.py --help)."""

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datus.io import load_json
from datus.pipeline import run_pipeline
from datus.utils import instantiate_loggers, seed_everything
from datus.utils.logging import log_evaluation

log = logging.getLogger("datus")

#: Config nodes whose values change the segments (a rerun with others must not mix them).
SETTINGS_KEYS = ("backbone", "dataset", "resize", "graph")


@hydra.main(version_base="1.3", config_path="conf", config_name="discover")
def main(cfg: DictConfig) -> float | None:
    seed_everything(cfg.seed)
    out_dir = Path(cfg.paths.output_dir)
    # Build the cheap, validating objects first: a bad config fails before the backbone loads.
    decomposer = instantiate(cfg.graph) if cfg.method == "datus" else None
    kmeans = instantiate(cfg.labeling.kmeans)
    resize = instantiate(cfg.resize)
    dataset = instantiate(cfg.dataset, transform=resize)
    backbone = instantiate(cfg.backbone)
    extractor = instantiate(cfg.labeling.extractor) if cfg.labeling.extractor else None
    loggers = instantiate_loggers(cfg.logger)
    log.info("%s, %s on %r -> %s", cfg.method, backbone.name, dataset, out_dir)
    summary = run_pipeline(
        backbone=backbone, dataset=dataset, out_dir=out_dir, kmeans=kmeans, decomposer=decomposer,
        make_trainer=lambda: instantiate(cfg.trainer, logger=False),
        method=cfg.method, stage=cfg.stage, segment_features=cfg.labeling.features, extractor=extractor,
        crop_size=cfg.labeling.crop.size, crop_background=cfg.labeling.crop.background,
        fill=cfg.labeling.fill, weighted=cfg.labeling.weighted, patch_feature=cfg.labeling.patch_feature,
        evaluate=cfg.evaluate, protocol=cfg.protocol,
        settings={key: OmegaConf.to_container(cfg[key], resolve=True) for key in SETTINGS_KEYS},
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, shard_size=cfg.shard_size,
        num_pictures=cfg.num_pictures, overwrite=cfg.overwrite,
    )
    metrics = summary.get("metrics")
    if metrics:
        log_evaluation(loggers, cfg, load_json(out_dir / "metrics.json"), out_dir, prefix="pseudo_masks/")
    if (out_dir / "pictures").is_dir():
        log.info("pictures: %s", out_dir / "pictures")
    log.info("outputs: %s (pseudo_masks/, pseudo_masks_color/, summary.json%s)",
             out_dir, ", metrics.json" if metrics else "")
    return metrics["miou"] if metrics else None


if __name__ == "__main__":
    main()
