"""The feature-head stage (config group ``head``): train a projection head once per settings, then reuse it.

No label and no ground truth is ever read: the head learns from the frozen features of the split
alone (STEGO's correlation distillation). It is kept in ``<cache_dir>/projection/<hash>/head.pt``
(hash of backbone, resize, the split's files and the head settings) with its ``config.json``,
trained under a lock with checkpoints every ``checkpoint_every`` steps (a killed training resumes
to the same weights), and reused by every later run with those settings.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from datus.backbones import Backbone
from datus.backbones.projected import ProjectedBackbone, ProjectionHead
from datus.features import FeatureCache, FeatureSpec, dataset_identity
from datus.io import file_digest
from datus.projection.data import PairedPatches, nearest_images, split_mean
from datus.projection.loss import CorrelationLoss
from datus.projection.module import ProjectionModule
from datus.training import ArtefactError, load_artefact, save_artefact

log = logging.getLogger(__name__)

__all__ = ["HeadFileError", "Projection", "check_codes", "load_head", "save_head"]

#: Version of ``head.pt``'s layout.
HEAD_FORMAT = 1
#: Version of the training itself, part of the cache key: a fix to how heads are trained must not
#: reuse heads trained before it (2: the loss correlates centred features).
TRAINING_VERSION = 2


class HeadFileError(ArtefactError):
    """A head file cannot be used: unreadable, or made for another backbone or feature width."""


def save_head(path: str | Path, head: ProjectionHead, meta: dict[str, Any]) -> Path:
    """``head.pt``: the state dict and what it was trained on (tensors and plain values: no pickled objects)."""
    return save_artefact(path, "projection head", HEAD_FORMAT, head.state_dict(),
                         {**meta, "in_dim": head.in_dim, "out_dim": head.out_dim, "hidden_dim": head.mlp[0].out_features})


def load_head(path: str | Path, *, backbone: str | None = None, in_dim: int | None = None,
              setting: str = "feature_head.checkpoint") -> tuple[ProjectionHead, dict[str, Any]]:
    """A saved head and its meta, checked against the ``backbone`` name and input width it must serve."""
    path = Path(path)
    state, meta = load_artefact(path, "projection head", (HEAD_FORMAT,), setting, HeadFileError)
    try:
        head = ProjectionHead(in_dim=int(meta["in_dim"]), out_dim=int(meta["out_dim"]),
                              hidden_dim=int(meta["hidden_dim"]))
        head.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any unreadable file is named the same way
        raise HeadFileError(f"{setting}={path}: not a projection head file ({type(err).__name__}: {err})") from err
    if backbone is not None and meta.get("backbone") != backbone:
        raise HeadFileError(f"{setting}={path} was trained on {meta.get('backbone')} features, not {backbone}'s: "
                            "train a head for this backbone (drop feature_head.checkpoint)")
    if in_dim is not None and head.in_dim != in_dim:
        raise HeadFileError(f"{setting}={path} reads {head.in_dim}-channel features, but {meta.get('features')} of "
                            f"this backbone have {in_dim}: check feature_head.features")
    return head, meta


class Projection:
    """Settings of the feature head and how to train it; :meth:`attach` returns the backbone with ``codes``.

    ``features`` are the backbone outputs the head reads and ``blocks`` earlier blocks' output tokens
    (all concatenated, as STEGO and CAUSE concatenate depths); ``dim`` the codes' width;
    ``knn`` neighbour images per image (cosine of mean features); ``samples`` patches per side
    drawn from each image per step; ``steps`` optimiser steps of ``batch_size`` images; ``loss``
    the correlation loss's shifts and weights. ``checkpoint`` uses a head file trained elsewhere
    instead of training (it must match the backbone and features).
    """

    def __init__(
        self,
        *,
        name: str = "stego",
        features: Sequence[str] = ("keys",),
        blocks: Sequence[int] = (),
        dim: int = 64,
        hidden_dim: int | None = None,
        loss: CorrelationLoss | dict | None = None,
        knn: int = 5,
        samples: int = 11,
        batch_size: int = 16,
        steps: int = 1500,
        lr: float = 5e-4,
        seed: int = 0,
        checkpoint_every: int = 100,
        accelerator: str = "cpu",
        checkpoint: str | None = None,
    ) -> None:
        self.name, self.features = str(name), FeatureSpec(names=tuple(features), blocks=tuple(blocks))
        self.dim, self.hidden_dim = int(dim), None if hidden_dim is None else int(hidden_dim)
        self.loss = loss if isinstance(loss, CorrelationLoss) else CorrelationLoss(**(loss or {}))
        self.knn, self.samples, self.batch_size = int(knn), int(samples), int(batch_size)
        self.steps, self.lr, self.seed = int(steps), float(lr), int(seed)
        self.checkpoint_every, self.accelerator = int(checkpoint_every), str(accelerator)
        self.checkpoint = checkpoint
        self.report: dict[str, Any] = {}
        for setting, value, least in (("feature_head.dim", self.dim, 1), ("feature_head.knn", self.knn, 1),
                                      ("feature_head.samples", self.samples, 2), ("feature_head.batch_size", self.batch_size, 2),
                                      ("feature_head.steps", self.steps, 1), ("feature_head.checkpoint_every", self.checkpoint_every, 1)):
            if value < least:
                raise ValueError(f"{setting}={value} must be >= {least}")
        if self.lr <= 0:
            raise ValueError(f"feature_head.lr={self.lr} must be > 0")

    def settings(self) -> dict[str, Any]:
        """What changes the trained head (the cache key's head part)."""
        return {"name": self.name, "training_version": TRAINING_VERSION, "features": list(self.features.names),
                **({"blocks": list(self.features.blocks)} if self.features.blocks else {}), "dim": self.dim,
                "hidden_dim": self.hidden_dim, "loss": asdict(self.loss), "knn": self.knn, "samples": self.samples,
                "batch_size": self.batch_size, "steps": self.steps, "lr": self.lr, "seed": self.seed}

    def check(self, backbone_name: str | None) -> None:
        """Fail before the backbone is built when ``feature_head.checkpoint`` is missing, unreadable or made for
        another backbone (cheap: reads the small file; its input width is checked by :meth:`attach`)."""
        if self.checkpoint is not None:
            load_head(self.checkpoint, backbone=backbone_name)

    def attach(self, backbone: Backbone, dataset, *, backbone_settings: dict, resize,
               cache: FeatureCache) -> ProjectedBackbone:
        """``backbone`` with the head trained on ``dataset``'s frozen features (or loaded from the cache);
        the head is kept beside the feature maps, in ``cache``'s ``projection/<hash>`` folder."""
        from datus.runs import backbone_identity, make_once

        in_dim = self.features.dim(backbone)
        if self.checkpoint is not None:
            head, _ = load_head(self.checkpoint, backbone=backbone.name, in_dim=in_dim)
            self.report = {"name": self.name, "path": str(self.checkpoint), "digest": file_digest(self.checkpoint),
                           "trained_this_run": False}
            return ProjectedBackbone(backbone, head, features=self.features.names, blocks=self.features.blocks)
        settings = {"backbone": backbone_identity(dict(backbone_settings)), "resize": repr(resize),
                    "dataset": dataset_identity(dataset), "head": self.settings()}
        folder = cache.folder(settings, kind="projection")
        path = folder / "head.pt"

        def train() -> None:
            start = time.monotonic()
            head = self._train(backbone, dataset, folder, in_dim=in_dim, backbone_settings=backbone_settings,
                               resize=resize, cache=cache)
            save_head(path, head, {"backbone": backbone.name, "features": list(self.features.names),
                                   "settings": self.settings(), "seconds": time.monotonic() - start})

        trained = make_once(path, settings, "the projection head", train)
        head, meta = load_head(path, backbone=backbone.name, in_dim=in_dim, setting="the cached head")
        #: what the run's summary says of the head (its file, whether this run trained it, how long that took)
        self.report = {"name": self.name, "path": str(path), "digest": file_digest(path), "trained_this_run": trained,
                       "training_seconds": meta.get("seconds")}
        return ProjectedBackbone(backbone, head, features=self.features.names, blocks=self.features.blocks)

    def _train(self, backbone: Backbone, dataset, folder: Path, *, in_dim: int, backbone_settings: dict, resize,
               cache: FeatureCache) -> ProjectionHead:
        from torch.utils.data import DataLoader

        from datus.training import folder_trainer

        index = cache.index(dataset, backbone=lambda: backbone, backbone_settings=backbone_settings, resize=resize,
                            spec=self.features)
        indices = sorted(index.entries)
        center, pooled = split_mean(index, indices)
        neighbours = nearest_images(pooled, center, self.knn)
        pl.seed_everything(self.seed, workers=True, verbose=False)
        head = ProjectionHead(in_dim=in_dim, out_dim=self.dim, hidden_dim=self.hidden_dim)
        head.center.copy_(center)
        module = ProjectionModule(head, self.loss, lr=self.lr)
        loader = DataLoader(PairedPatches(index, indices, neighbours, self.samples),
                            batch_size=min(self.batch_size, len(indices)), shuffle=True, drop_last=True)
        trainer, resume = folder_trainer(folder, accelerator=self.accelerator,
                                         checkpoint_every={"every_n_train_steps": self.checkpoint_every},
                                         max_steps=self.steps, max_epochs=-1, log_every_n_steps=10)
        log.info("training the projection head: %d images, %d steps of %d (%s)", len(indices), self.steps,
                 loader.batch_size, folder)
        trainer.fit(module, loader, ckpt_path=resume)
        return copy.deepcopy(module.head).cpu().eval()


def check_codes(features_read: dict[str, str], projection: Projection | None, debias: str | None = None) -> None:
    """Refuse, before any work, a method reading ``codes`` without a head, or a head whose codes nothing reads.

    ``features_read`` maps each setting to the patch feature it names (``Method.features_read``; a key
    with ``=`` in it, such as ``method=stego``, is a choice that always reads that feature);
    ``debias``: the graph's ``affinity.debias``, since the key bias means nothing for codes.
    """
    readers = [setting for setting, feature in features_read.items() if feature == "codes"]
    if projection is None and readers:
        named = ", ".join(r if "=" in r else f"{r}=codes" for r in readers)
        raise ValueError(f"{named} reads a feature head's codes: set feature_head=stego (or another feature)")
    if projection is not None and not features_read:
        raise ValueError(f"feature_head={projection.name} trains a feature head on backbone features, which this method "
                         "does not read: use feature_head=none")
    if projection is not None and not readers:
        raise ValueError(f"feature_head={projection.name} trains a feature head but {', '.join(features_read)} read "
                         f"{', '.join(sorted(set(features_read.values())))}: set {next(iter(features_read))}=codes "
                         "(or feature_head=none)")
    if readers and debias == "remove_key_bias" and features_read.get("graph.feature") == "codes":
        raise ValueError("graph.affinity.debias=remove_key_bias removes the backbone's key bias, which codes do "
                         "not have: use graph.affinity.debias=center or none with graph.feature=codes")
