"""From a composed ``discover`` config to :func:`datus.pipeline.run_pipeline`'s objects."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datus.cli.loggers import (
    check_loggers,
    evaluation_metrics,
    finish_loggers,
    instantiate_loggers,
    log_results,
    summary_metrics,
)
from datus.cli.setup import keep_digests, seed_everything
from datus.cli.signals import exit_on_sigterm
from datus.cli.train import refine_from_config, refinement_config
from datus.io import load_json
from datus.metrics import check_matching
from datus.pipeline import Passes, RunDir, Scoring, run_pipeline
from datus.projection import check_codes
from datus.runs import cache_settings, hold_run_dir, run_settings

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
        method=method, labeler=labeler, backbone=backbone, dataset=dataset,
        passes=Passes(make_trainer=lambda: instantiate(cfg.trainer, logger=False), batch_size=cfg.batch_size,
                      num_workers=cfg.num_workers, shard_size=cfg.shard_size, cache_dir=cfg.cache_dir),
        run_dir=RunDir(Path(out_dir), settings=run_settings(container), overwrite=cfg.overwrite,
                       num_pictures=cfg.num_pictures),
        settings=cache_settings(container), stage=cfg.stage, shard=(cfg.shard.index, cfg.shard.count),
        scoring=Scoring(evaluate=cfg.evaluate, protocol=cfg.protocol, matching=cfg.matching),
        postprocess=instantiate(cfg.postprocess) if cfg.get("postprocess") else None,
        projection=projection,
    )


def discover_from_config(cfg: DictConfig) -> float | None:
    """discover.py: the pipeline job, its results to the loggers, then ``refine=true``'s training;
    returns the pseudo masks' mIoU (the refined one with refine=true; None without ground truth)."""
    exit_on_sigterm()
    seed_everything(cfg.seed)
    keep_digests(cfg.cache_dir)
    check_loggers(cfg.get("logger"))  # W&B without a key or network: offline, decided now
    out_dir = Path(cfg.paths.output_dir)
    with hold_run_dir(out_dir):  # one run per folder, for the run's whole life
        return _discover(cfg, out_dir)


def _discover(cfg: DictConfig, out_dir: Path) -> float | None:
    summary = run_pipeline(**pipeline_kwargs(cfg, out_dir))
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
        history = refine_from_config(refinement_config(cfg, out_dir), loggers=loggers)
        result = history[-1].get("best_val_miou", result)
    finish_loggers(loggers)
    return result
