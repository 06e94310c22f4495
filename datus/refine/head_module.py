"""A light head on the frozen backbone's cached patch features, trained on pseudo masks.

The field's answer to refinement on a budget (STEGO, HP, CAUSE, PriMaPs): the backbone stays
frozen, so its features are computed once per image and only a small head learns. Logits on
the patch grid are upsampled bilinearly to each mask's pixels for the loss (cross-entropy over
labelled pixels, optionally focal; ``align_block`` adds the patch-to-patch supervised
contrastive loss of Seifi et al. 2024). Validation scores the ground truth with the honest
Hungarian metric. A checkpoint holds everything needed to segment new images: the head's
weights, and the backbone, resize and feature settings (the backbone's weights are rebuilt
from its settings, never copied into the checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from datus.backbones import Backbone, build_backbone, get_backbone_spec
from datus.features import FeatureCache, FeatureIndex, FeatureSpec, warn_without_maps
from datus.io import plain
from datus.masks import UNLABELLED, read_mask
from datus.metrics import ClusterConfusion, check_matching
from datus.postprocess import upsample_scores
from datus.refine.head_data import FeatureMaskDataModule, FeatureMasks
from datus.refine.heads import AlignBlock, build_head
from datus.refine.optim import configure_optimizers, finish_validation


class HeadModule(pl.LightningModule):
    """``head`` (``{name, **settings}``, see :func:`datus.refine.heads.build_head`) on ``backbone``'s features.

    ``backbone`` are :func:`datus.backbones.build_backbone`'s keywords, ``resize`` those of
    :class:`datus.transforms.ResizeForBackbone` (without ``patch_size``), ``features`` those of
    :class:`datus.features.FeatureSpec`. ``contrastive`` weighs the supervised contrastive
    loss (``align_block`` only) over ``contrastive_patches`` sampled patches per batch.
    """

    def __init__(self, *, head: dict, num_clusters: int, backbone: dict, resize: dict, features: dict,
                 class_names: list[str] | None = None, optimizer=None, scheduler=None, focal_gamma: float = 0.0,
                 contrastive: float = 0.0, contrastive_patches: int = 1024, contrastive_temperature: float = 0.1,
                 data: dict | None = None, picture_dir: str | None = None, num_pictures: int = 4,
                 matching: str = "hungarian") -> None:
        super().__init__()
        backbone = {k: v for k, v in plain(dict(backbone)).items() if k != "_target_"}
        resize = {k: v for k, v in plain(dict(resize)).items() if k not in ("_target_", "patch_size")}
        self.save_hyperparameters({
            "head": plain(dict(head)), "num_clusters": int(num_clusters), "backbone": backbone, "resize": resize,
            "features": plain(dict(features)), "class_names": [str(c) for c in (class_names or [])],
            "focal_gamma": float(focal_gamma), "contrastive": float(contrastive),
            "contrastive_patches": int(contrastive_patches), "contrastive_temperature": float(contrastive_temperature),
            "data": plain(dict(data or {})),
            "picture_dir": None if picture_dir is None else str(picture_dir), "num_pictures": int(num_pictures),
            "matching": check_matching(matching),
        })
        self.spec = FeatureSpec(**self.hparams.features)
        spec = get_backbone_spec(backbone["name"])
        self.in_dim = spec.embed_dim * (len(self.spec.names) + len(self.spec.blocks))
        settings = {k: v for k, v in self.hparams.head.items() if k != "name"}
        self.head = build_head(self.hparams.head["name"], in_dim=self.in_dim, num_classes=int(num_clusters), **settings)
        if contrastive and not isinstance(self.head, AlignBlock):
            raise ValueError(f"model.contrastive={contrastive}: the contrastive loss needs model.head.name=align_block")
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names = list(self.hparams.class_names)
        self.val_metric = ClusterConfusion(int(num_clusters), self.class_names,
                                           matching=self.hparams.matching) if self.class_names else None
        self.picture_dir, self.num_pictures = picture_dir, num_pictures
        #: index -> (H, W, 3) uint8 image of the validation split, for the validation pictures
        self.image_of: Callable[[int], np.ndarray] | None = None
        self._pictures: list[dict[str, np.ndarray]] = []
        self._frozen: dict[str, Backbone] = {}  # not a submodule: never in the checkpoint, never trained
        #: ground truth of the validation images without a feature map (scored as all unlabelled)
        self._unscored_masks: list[Tensor] = []

    # -- features of new images ------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return get_backbone_spec(self.hparams.backbone["name"]).patch_size

    def backbone(self) -> Backbone:
        """The frozen backbone the head was trained on (built on first use, not a saved submodule)."""
        if "backbone" not in self._frozen:
            self._frozen["backbone"] = build_backbone(**self.hparams.backbone)
        return self._frozen["backbone"]

    def resizer(self):
        from datus.transforms import ResizeForBackbone

        return ResizeForBackbone(patch_size=self.patch_size, **self.hparams.resize)

    def feature_index(self, dataset, cache: FeatureCache) -> FeatureIndex:
        """The cached feature maps of ``dataset`` for this head's backbone, resize and features."""
        if cache is None:
            raise ValueError("a head on frozen features needs a FeatureCache (where the feature maps are kept)")
        return cache.index(dataset, backbone=self.backbone, backbone_settings=self.hparams.backbone,
                           resize=self.resizer(), spec=self.spec)

    def make_datamodule(self, train, pseudo_masks, val=None, cache: FeatureCache | None = None) -> FeatureMaskDataModule:
        """Cached maps of ``train`` with their pseudo masks; of ``val`` with its ground truth (``model.data``)."""
        data = dict(self.hparams.data)
        scale, flip = tuple(data.pop("scale", (0.5, 1.0))), bool(data.pop("flip", True))
        masks_dir = Path(pseudo_masks)
        train_index = self.feature_index(train, cache)
        stems = {i: s.stem for i, s in enumerate(train.samples)}
        train_set = FeatureMasks(train_index, sorted(train_index.entries),
                                 lambda i: read_mask(masks_dir / f"{stems[i]}.png"), train=True, scale=scale, flip=flip)
        val_set = None
        if val is not None and val.has_masks:
            val_index = self.feature_index(val, cache)
            val_set = FeatureMasks(val_index, sorted(val_index.entries), lambda i: val.read_mask(val.samples[i]))
            self.image_of = lambda i: val.load(i)["image"].permute(1, 2, 0).numpy()
            unscored = [i for i in range(len(val)) if i not in val_index]
            warn_without_maps(val, unscored, "validation counts their labelled pixels as wrong")
            self._unscored_masks = [torch.from_numpy(val.read_mask(val.samples[i])) for i in unscored]
        return FeatureMaskDataModule(train_set, val_set, **data)

    def logits_source(self, dataset, cache: FeatureCache | None = None) -> Callable[[int], Tensor | None]:
        """``index -> (K, h, w)`` logits of that image of ``dataset`` (from its cached feature map;
        None for an image that has none)."""
        index = self.feature_index(dataset, cache)

        def logits(i: int) -> Tensor | None:
            if i not in index:
                return None  # no feature map: the image was skipped when the maps were computed
            fmap = torch.from_numpy(np.array(index[i], dtype=np.float32))[None].to(self.device)
            return self(fmap)[0]

        return logits

    # -- training ----------------------------------------------------------------------------
    def forward(self, features: Tensor) -> Tensor:
        """``(B, K, h, w)`` logits of ``(B, D, h, w)`` feature maps."""
        if features.shape[1] != self.in_dim:
            raise ValueError(f"the head expects {self.in_dim}-channel features, got {features.shape[1]}")
        return self.head(features)

    def pixel_loss(self, logits: Tensor, grids: list[tuple[int, int]], masks: list[Tensor]) -> Tensor:
        """Cross-entropy (focal with ``focal_gamma``) of each item's upsampled logits over its labelled pixels."""
        total, count = logits.sum() * 0.0, 0
        for n, ((h, w), mask) in enumerate(zip(grids, masks)):
            labelled = mask != UNLABELLED
            if not labelled.any():
                continue
            scores = upsample_scores(logits[n, :, :h, :w], tuple(mask.shape))
            log_probs = scores.log_softmax(dim=0).permute(1, 2, 0)[labelled]  # (P, K)
            target = mask[labelled]
            picked = log_probs.gather(1, target[:, None])[:, 0]
            if self.hparams.focal_gamma:
                picked = picked * (1 - picked.exp()).pow(self.hparams.focal_gamma)
            total = total - picked.sum()
            count += int(labelled.sum())
        return total / max(count, 1)

    def contrastive_loss(self, embeddings: Tensor, grids: list[tuple[int, int]], masks: list[Tensor],
                         full: tuple[int, int]) -> Tensor:
        """Supervised contrastive loss between sampled patches: same pseudo label = positive pair."""
        rows, labels = [], []
        for n, ((h, w), mask) in enumerate(zip(grids, masks)):
            height, width = mask.shape
            ys = ((torch.arange(h) + 0.5) * height / h).long().clamp(max=height - 1)
            xs = ((torch.arange(w) + 0.5) * width / w).long().clamp(max=width - 1)
            patch_labels = mask[ys][:, xs].reshape(-1).to(embeddings.device)  # label at each patch centre
            grid_index = (torch.arange(h)[:, None] * full[1] + torch.arange(w)[None]).reshape(-1).to(embeddings.device)
            keep = patch_labels != UNLABELLED
            rows.append(embeddings[n, grid_index[keep]])
            labels.append(patch_labels[keep])
        x, y = torch.cat(rows), torch.cat(labels)
        if len(x) > self.hparams.contrastive_patches:
            pick = torch.randperm(len(x), device=x.device)[: self.hparams.contrastive_patches]
            x, y = x[pick], y[pick]
        if len(x) < 2:
            return x.sum() * 0.0
        logits = x @ x.T / self.hparams.contrastive_temperature
        self_pair = torch.eye(len(x), dtype=torch.bool, device=x.device)
        logits = logits.masked_fill(self_pair, -1e9)
        positive = (y[:, None] == y[None]) & ~self_pair
        log_prob = logits.log_softmax(dim=1)
        has = positive.any(dim=1)
        if not has.any():
            return x.sum() * 0.0
        per_anchor = (log_prob * positive).sum(1)[has] / positive.sum(1)[has]
        return -per_anchor.mean()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        features = batch["features"]
        if isinstance(self.head, AlignBlock):
            embeddings = self.head.embeddings(features)
            logits = self.head.logits_of(embeddings, tuple(features.shape[-2:]))
        else:
            logits = self(features)
        loss = self.pixel_loss(logits, batch["grids"], batch["masks"])
        self.log("train/ce", loss, on_step=False, on_epoch=True, batch_size=len(features))
        if self.hparams.contrastive:
            contrast = self.contrastive_loss(embeddings, batch["grids"], batch["masks"], tuple(features.shape[-2:]))
            self.log("train/contrastive", contrast, on_step=False, on_epoch=True, batch_size=len(features))
            loss = loss + self.hparams.contrastive * contrast
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(features))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.val_metric is None:
            return
        logits = self(batch["features"])
        for n, ((h, w), truth) in enumerate(zip(batch["grids"], batch["masks"])):
            pred = upsample_scores(logits[n, :, :h, :w], tuple(truth.shape)).argmax(dim=0)
            self.val_metric.update(pred, truth)
            if len(self._pictures) < self.num_pictures and self.image_of is not None:
                self._pictures.append({"stem": batch["stems"][n], "image": self.image_of(batch["indices"][n]),
                                       "truth": truth.cpu().numpy(), "pred": pred.cpu().numpy().astype(np.uint8)})

    def on_validation_epoch_end(self) -> None:
        if self.val_metric is not None:
            if self.trainer.is_global_zero:  # once: the metric sums the ranks' confusions
                for truth in self._unscored_masks:  # no prediction: every labelled pixel is wrong
                    truth = truth.to(self.device)
                    self.val_metric.update(torch.full_like(truth, UNLABELLED), truth)
            finish_validation(self, self._pictures)
        self._pictures = []

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory)
