"""Glue between Hydra configs and Lightning objects, used only by the entry points."""

from __future__ import annotations

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

def instantiate_loggers(cfg: DictConfig | None) -> list:
    """Build every logger under the ``logger`` group (a dict of ``_target_`` nodes)."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node and "_target_" in node]


def seed_everything(seed: int | None) -> None:
    """Seed python, numpy and torch (workers too) when a seed is given."""
    if seed is not None:
        pl.seed_everything(int(seed), workers=True, verbose=False)

