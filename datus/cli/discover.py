"""From a composed ``discover`` config to :func:`datus.pipeline.run_pipeline`'s objects."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datus.metrics import check_matching
from datus.projection import check_codes
from datus.runs import cache_settings, run_settings

log = logging.getLogger("datus")


def pipeline_kwargs(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Instantiate what ``cfg`` names, cheapest and most validating first, so a bad setting
    fails before the backbone loads or an image is read; returns ``run_pipeline``'s arguments."""
    check_matching(cfg.matching)
    labeler = instantiate(cfg.labeling, k=cfg.k)
    method = instantiate(cfg.method)
    projection = instantiate(cfg.feature_head) if cfg.get("feature_head") is not None else None
    method.check(k=labeler.k)
    if labeler.centroids is not None and not method.inductive:
        raise ValueError(f"labeling.centroids labels k-means features with another run's centroids; method={method.name} "
                         "does not cluster with k-means centroids: drop labeling.centroids")
    check_codes(method.features_read(), projection, OmegaConf.select(cfg, "graph.affinity.debias"))
    if projection is not None:
        projection.check(OmegaConf.select(cfg, "backbone.name"))
    resize = instantiate(cfg.resize)
    dataset = instantiate(cfg.dataset, transform=resize)
    backbone = instantiate(cfg.backbone) if method.uses_backbone else None  # W-Net reads pixels only
    log.info("%s, %s on %r -> %s", method.name, backbone.name if backbone else "no backbone", dataset, out_dir)
    container = OmegaConf.to_container(cfg, resolve=True)
    return dict(
        method=method, labeler=labeler, backbone=backbone, dataset=dataset, out_dir=Path(out_dir),
        make_trainer=lambda: instantiate(cfg.trainer, logger=False),
        stage=cfg.stage, evaluate=cfg.evaluate, protocol=cfg.protocol,
        matching=cfg.matching,
        settings=cache_settings(container), run_settings=run_settings(container),
        cache_dir=cfg.cache_dir, shard=(cfg.shard.index, cfg.shard.count),
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, shard_size=cfg.shard_size,
        num_pictures=cfg.num_pictures, overwrite=cfg.overwrite,
        postprocess=instantiate(cfg.postprocess) if cfg.get("postprocess") else None,
        projection=projection,
    )
