"""Glue between Hydra configs and Lightning objects, used only by the entry points."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("datus")


def instantiate_loggers(cfg: DictConfig | None) -> list:
    """Build every logger under the ``logger`` group (a dict of ``_target_`` nodes)."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node and "_target_" in node]


def instantiate_callbacks(cfg: DictConfig | None) -> list:
    """Build every callback under a ``callbacks`` node (a dict of ``_target_`` nodes)."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node and "_target_" in node]


def seed_everything(seed: int | None) -> None:
    """Seed python, numpy and torch (workers too) when a seed is given."""
    if seed is not None:
        pl.seed_everything(int(seed), workers=True, verbose=False)


def log_config(cfg: DictConfig) -> None:
    """Print the resolved config once at start, so every run's log says what it did."""
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
