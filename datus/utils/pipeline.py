"""From a composed ``discover`` config to the arguments of :func:`datus.pipeline.run_pipeline`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datus.pipeline import check_choices

log = logging.getLogger("datus")

#: Config nodes that change the backbone passes (segments, patch features): the cache key.
SETTINGS_KEYS = ("backbone", "dataset", "resize", "graph")
#: Config nodes that change the pseudo masks: a rerun into the same output dir must match them.
RUN_KEYS = (*SETTINGS_KEYS, "labeling", "method", "seed", "postprocess")


def _absolute_root(container: dict) -> dict:
    """``container`` with ``dataset.root`` made absolute: the same data named relatively from one
    folder and absolutely (or through a link) shares one cache entry, and one relative name used
    from two folders does not."""
    root = container["dataset"].get("root")
    if root is None:
        return container
    return {**container, "dataset": {**container["dataset"], "root": str(Path(root).expanduser().resolve())}}


def cache_settings(container: dict) -> dict:
    """The cache key's settings; a randomly initialised backbone is only reproducible with its seed."""
    settings = {key: container[key] for key in SETTINGS_KEYS}
    if container["backbone"].get("weights") == "random":
        settings["seed"] = container["seed"]
    return settings


def pipeline_kwargs(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Instantiate what ``cfg`` names, cheapest and most validating first, so a bad setting
    fails before the backbone loads or an image is read; returns ``run_pipeline``'s keywords."""
    check_choices(cfg.method, cfg.stage, cfg.labeling.features)
    decomposer = instantiate(cfg.graph) if cfg.method == "datus" else None
    kmeans = instantiate(cfg.labeling.kmeans)
    resize = instantiate(cfg.resize)
    dataset = instantiate(cfg.dataset, transform=resize)
    backbone = instantiate(cfg.backbone)
    extractor = instantiate(cfg.labeling.extractor) if cfg.labeling.extractor else None
    log.info("%s, %s on %r -> %s", cfg.method, backbone.name, dataset, out_dir)
    container = _absolute_root(OmegaConf.to_container(cfg, resolve=True))
    return dict(
        backbone=backbone, dataset=dataset, out_dir=Path(out_dir), kmeans=kmeans, decomposer=decomposer,
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
        postprocess=instantiate(cfg.postprocess) if cfg.get("postprocess") else None,
        score_temperature=cfg.labeling.score_temperature,
    )
