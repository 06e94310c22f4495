"""Entry point: the DatUS² pipeline on a dataset split (python discover.py --help)."""

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datus.io import load_json
from datus.pipeline import run_pipeline
from datus.utils import finish_loggers, instantiate_loggers, refinement_config, seed_everything
from datus.utils.logging import evaluation_metrics, log_results, summary_metrics
from datus.utils.refinement import run_refinement
from datus.utils.signals import exit_on_sigterm

log = logging.getLogger("datus")

#: Config nodes that change the backbone passes (segments, patch features): the cache key.
SETTINGS_KEYS = ("backbone", "dataset", "resize", "graph")
#: Config nodes that change the pseudo masks: a rerun into the same output dir must match them.
RUN_KEYS = (*SETTINGS_KEYS, "labeling", "method", "seed")


def cache_settings(container: dict) -> dict:
    """The cache key's settings; a randomly initialised backbone is only reproducible with its seed."""
    settings = {key: container[key] for key in SETTINGS_KEYS}
    if container["backbone"].get("weights") == "random":
        settings["seed"] = container["seed"]
    return settings


@hydra.main(version_base="1.3", config_path="conf", config_name="discover")
def main(cfg: DictConfig) -> float | None:
    exit_on_sigterm()
    seed_everything(cfg.seed)
    out_dir = Path(cfg.paths.output_dir)
    # Build the cheap, validating objects first: a bad config fails before the backbone loads.
    decomposer = instantiate(cfg.graph) if cfg.method == "datus" else None
    kmeans = instantiate(cfg.labeling.kmeans)
    resize = instantiate(cfg.resize)
    dataset = instantiate(cfg.dataset, transform=resize)
    backbone = instantiate(cfg.backbone)
    extractor = instantiate(cfg.labeling.extractor) if cfg.labeling.extractor else None
    log.info("%s, %s on %r -> %s", cfg.method, backbone.name, dataset, out_dir)
    container = OmegaConf.to_container(cfg, resolve=True)
    summary = run_pipeline(
        backbone=backbone, dataset=dataset, out_dir=out_dir, kmeans=kmeans, decomposer=decomposer,
        make_trainer=lambda: instantiate(cfg.trainer, logger=False),
        method=cfg.method, stage=cfg.stage, segment_features=cfg.labeling.features, extractor=extractor,
        crop_size=cfg.labeling.crop.size, crop_background=cfg.labeling.crop.background,
        fill=cfg.labeling.fill, weighted=cfg.labeling.weighted, patch_feature=cfg.labeling.patch_feature,
        evaluate=cfg.evaluate, protocol=cfg.protocol,
        settings=cache_settings(container),
        run_settings={key: container[key] for key in RUN_KEYS},
        cache_dir=cfg.cache_dir, shard_index=cfg.shard.index, shard_count=cfg.shard.count,
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, shard_size=cfg.shard_size,
        num_pictures=cfg.num_pictures, overwrite=cfg.overwrite,
    )
    if not summary:  # a DDP rank other than 0: rank 0 clusters, writes and logs
        return None
    loggers = instantiate_loggers(cfg.logger)
    metrics = summary.get("metrics")
    logged = summary_metrics(summary)
    if metrics:
        logged.update(evaluation_metrics(load_json(out_dir / "metrics.json"), prefix="pseudo_masks/"))
    pictures = [out_dir / "confusion_matrix.png", out_dir / "samples.png", *sorted((out_dir / "pictures").glob("*.png"))]
    log_results(loggers, cfg, logged, pictures)
    if (out_dir / "pictures").is_dir():
        log.info("pictures: %s", out_dir / "pictures")
    if cfg.stage == "segments":
        log.info("segments: %s (then run stage=labels)", summary.get("segments_dir"))
    else:
        log.info("outputs: %s (pseudo_masks/, pseudo_masks_color/, summary.json%s)",
                 out_dir, ", metrics.json" if metrics else "")
    result = metrics["miou"] if metrics else None
    if cfg.refine and cfg.stage != "segments":
        history = run_refinement(refinement_config(cfg, out_dir), loggers=loggers)
        result = history[-1].get("best_val_miou", result)
    finish_loggers(loggers)
    return result


if __name__ == "__main__":
    main()
