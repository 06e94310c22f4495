"""Optimiser and per-step scheduler from Hydra partials, shared by the refinement modules."""

from __future__ import annotations

import inspect
from typing import Any

import pytorch_lightning as pl
import torch


def configure_optimizers(module: pl.LightningModule, optimizer_factory=None, scheduler_factory=None) -> Any:
    """``optimizer_factory(params)`` (AdamW 1e-3 by default) and ``scheduler_factory(optimizer)`` stepped per batch.

    A scheduler taking ``total_steps`` (OneCycleLR) gets the trainer's estimated number of steps.
    """
    factory = optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-3))
    optimizer = factory([p for p in module.parameters() if p.requires_grad])
    if scheduler_factory is None:
        return optimizer
    kwargs = {}
    target = getattr(scheduler_factory, "func", scheduler_factory)
    if "total_steps" in inspect.signature(target).parameters:
        kwargs["total_steps"] = max(1, int(module.trainer.estimated_stepping_batches))
    scheduler = scheduler_factory(optimizer, **kwargs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
