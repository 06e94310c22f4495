"""Objects more than one entry point builds from its config: the feature cache of heads on frozen
features and the post-processing (train.py and evaluate.py ckpt=)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from datus.features import FeatureCache


def feature_cache(cfg: DictConfig, out_dir: Path) -> FeatureCache:
    """Where heads on frozen features keep their feature maps: ``cache_dir`` (or the run dir)."""
    # every image, whatever the training does (fast_dev_run runs one batch)
    make_trainer = lambda: instantiate(cfg.trainer, logger=False, fast_dev_run=False)  # noqa: E731
    return FeatureCache(cfg.get("cache_dir"), out_dir, make_trainer=make_trainer,
                        batch_size=cfg.batch_size, num_workers=cfg.num_workers)


def postprocessor(cfg: DictConfig):
    """The ``postprocess`` object (e.g. the dense CRF), or None."""
    return instantiate(cfg.postprocess) if cfg.get("postprocess") else None
