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


def finish_validation(module: pl.LightningModule, pictures: list[dict]) -> None:
    """End a validation epoch: log ``val/miou``, ``val/pixel_accuracy`` and ``val/mean_f1`` from
    ``module.val_metric`` (then reset it) and save ``pictures`` (image, truth, prediction) as
    ``<module.picture_dir>/epoch_<n>.png`` on rank 0, outside the sanity check."""
    result = module.val_metric.compute()
    module.val_metric.reset()
    module.log_dict({"val/miou": result["miou"], "val/pixel_accuracy": result["pixel_accuracy"],
                     "val/mean_f1": result["mean_f1"]}, prog_bar=True, sync_dist=False)
    trainer = module.trainer
    if module.picture_dir and pictures and trainer.is_global_zero and not trainer.sanity_checking:
        from pathlib import Path

        from datus.figures import samples_figure
        from datus.io import save_figure

        save_figure(Path(module.picture_dir) / f"epoch_{module.current_epoch:03d}.png",
                    samples_figure(pictures, result, module.class_names))
