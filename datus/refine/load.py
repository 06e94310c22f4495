"""Load any refinement checkpoint (a head on frozen features, or a DeepLabV3 on images)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from datus.refine.head_module import HeadModule
from datus.refine.module import RefineModule


def load_refiner(path: str | Path, map_location: str = "cpu") -> pl.LightningModule:
    """The trained module in ``path``: a :class:`HeadModule` when its hyperparameters name a head."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    cls = HeadModule if "head" in checkpoint.get("hyper_parameters", {}) else RefineModule
    return cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
