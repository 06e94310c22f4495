"""PriMaPs-EM as a cached, resumable stage: features, proposals, k-means start, EM, teacher logits.

Everything is keyed by what produces it and kept in the cache: the frozen feature maps (the
shared :class:`~datus.features.FeatureCache`), the proposals (``primaps_proposals/<hash>``:
backbone, resize, features, split files, proposal settings) and the fitted prototypes
(``primaps/<hash>``: the proposals' key plus K, the k-means seed and the EM settings), whose
training checkpoints every ``checkpoint_every`` steps with its random state, so a killed fit
resumes to the same prototypes. No label is read; the last teacher is kept (PriMaPs' own code
picks its checkpoint by validation mIoU, which needs labels).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from datus.backbones import Backbone
from datus.features import FeatureCache, FeatureIndex, FeatureSpec, dataset_identity
from datus.io import file_digest
from datus.primaps.em import PriMaPsModule, Prototypes, check_decay
from datus.primaps.proposals import check_threshold, median_filter, principal_masks, proposal_map, vote_kept
from datus.shards import ArrayStore
from datus.training import load_artefact, save_artefact

log = logging.getLogger(__name__)

#: Version of the proposals' and the EM's computation, part of their cache keys.
PROPOSALS_VERSION = 1
EM_VERSION = 3


class PriMaPs:
    """Settings of PriMaPs-EM (``conf/method/primaps.yaml``) and the stage that fits it on a split.

    Proposals: ``threshold`` (cosine to the snapped direction, as a fraction of the largest),
    ``coverage`` (stop when this share of the patches is covered), ``patience`` (or when the
    covered set has not changed for this many masks), ``proposal_crf`` (the dense CRF that snaps
    them to the image; None: none) and ``label_scale`` (the EM's label grid, in pixels per patch
    side). EM: ``steps`` of ``batch_size`` images (0: the k-means start is the result), Adam at
    ``lr``, the focal weighting's ``gamma``, the teacher's ``decay`` every ``ema_every`` steps.
    ``features`` and ``blocks`` are the frozen features read (PriMaPs: the last block's tokens).
    """

    def __init__(self, *, features: Sequence[str] = ("tokens",), blocks: Sequence[int] = (), threshold: float = 0.4,
                 coverage: float = 0.95, patience: int = 3, proposal_crf=None, label_scale: int = 4,
                 steps: int = 1000, batch_size: int = 16, lr: float = 5e-3, gamma: float = 2.0, decay: float = 0.98,
                 ema_every: int = 10, init_points: int = 200_000, checkpoint_every: int = 100,
                 accelerator: str = "cpu") -> None:
        self.spec = FeatureSpec(names=tuple(features), blocks=tuple(blocks))
        self.threshold = check_threshold(threshold)
        if not 0 < float(coverage) <= 1:
            raise ValueError(f"method.coverage={coverage}: the share of patches to cover must be in (0, 1]")
        self.coverage, self.decay = float(coverage), check_decay(decay)
        for setting, value, least in (("method.patience", patience, 1), ("method.label_scale", label_scale, 1),
                                      ("method.steps", steps, 0), ("method.batch_size", batch_size, 1),
                                      ("method.ema_every", ema_every, 1), ("method.init_points", init_points, 1),
                                      ("method.checkpoint_every", checkpoint_every, 1)):
            if isinstance(value, bool) or int(value) != value or value < least:
                raise ValueError(f"{setting}={value} must be a whole number >= {least}")
        if float(lr) <= 0:
            raise ValueError(f"method.lr={lr} must be > 0")
        if float(gamma) < 0:
            raise ValueError(f"method.gamma={gamma} must be >= 0")
        self.patience, self.label_scale, self.steps = int(patience), int(label_scale), int(steps)
        self.batch_size, self.lr, self.gamma, self.ema_every = int(batch_size), float(lr), float(gamma), int(ema_every)
        self.init_points, self.checkpoint_every, self.accelerator = int(init_points), int(checkpoint_every), str(accelerator)
        self.proposal_crf = proposal_crf
        self.report: dict[str, Any] = {}

    # ------------------------------------------------------------------ settings (cache keys)
    def proposal_settings(self) -> dict[str, Any]:
        crf = None if self.proposal_crf is None else repr(self.proposal_crf)
        return {"version": PROPOSALS_VERSION, "features": self.spec.as_dict(), "threshold": self.threshold,
                "coverage": self.coverage, "patience": self.patience, "crf": crf, "label_scale": self.label_scale}

    def em_settings(self, k: int, seed: int) -> dict[str, Any]:
        return {"version": EM_VERSION, "k": int(k), "seed": int(seed), "steps": self.steps,
                "batch_size": self.batch_size, "lr": self.lr, "gamma": self.gamma, "decay": self.decay,
                "ema_every": self.ema_every, "init_points": self.init_points}

    # ------------------------------------------------------------------ the stage
    def fit(self, backbone: Backbone, dataset, *, backbone_settings: dict, cache: FeatureCache, k: int,
            seed: int) -> tuple[FeatureIndex, Prototypes]:
        """The split's feature maps and its fitted prototypes (the teacher), computed where not cached."""
        from datus.runs import backbone_identity, make_once

        self.spec.dim(backbone)  # an unknown block is refused before any image is read
        index = cache.index(dataset, backbone=lambda: backbone, backbone_settings=backbone_settings,
                            resize=dataset.transform, spec=self.spec)
        base = {"backbone": backbone_identity(dict(backbone_settings)), "resize": repr(dataset.transform),
                "dataset": dataset_identity(dataset), "proposals": self.proposal_settings()}
        start = time.monotonic()
        store = ArrayStore(cache.folder(base, kind="primaps_proposals") / "proposals")
        made = self._proposals(dataset, index, store)
        proposal_seconds = time.monotonic() - start
        counts = [int(r.meta[2]) for r in store]
        if k > sum(counts):  # each proposal carries one label: fewer proposals than K leave clusters unlearnable
            raise ValueError(f"k={k}: the {len(counts)} images have {sum(counts)} proposals in all, fewer than K "
                             "(lower k, or raise method.threshold for more, smaller proposals)")
        folder = cache.folder({**base, "em": self.em_settings(k, seed)}, kind="primaps")
        path = folder / "primaps.pt"
        trained = make_once(path, {**base, "em": self.em_settings(k, seed)}, "the PriMaPs-EM prototypes",
                            lambda: self._fit(index, store, folder, path, k=k, seed=seed))
        state, meta = load_artefact(path, "PriMaPs-EM prototypes", (EM_VERSION,), "the cached PriMaPs-EM prototypes")
        teacher = Prototypes(torch.zeros(k, meta["dim"]))
        teacher.load_state_dict(state)
        self.report = {"path": str(path), "digest": file_digest(path), "trained_this_run": trained,
                       "em_seconds": meta["seconds"], "proposals_computed_this_run": made,
                       "proposal_seconds": round(proposal_seconds, 1), "proposals_per_image": float(np.mean(counts)),
                       "steps": self.steps, "final_loss": meta.get("final_loss"), "start_vote": meta.get("start_vote")}
        return index, teacher.eval()

    def _proposals(self, dataset, index: FeatureIndex, store: ArrayStore) -> int:
        """Compute the proposals of every image with a feature map that has none yet (resumable by shard)."""
        from rich.progress import track

        done = store.done_indices()
        todo = [i for i in sorted(index.entries) if i not in done]
        shard: list[tuple[int, str, np.ndarray, tuple[int, ...]]] = []
        for i in track(todo, description=f"PriMaPs proposals of {dataset.split}", transient=True, disable=not todo):
            shard.append(self.proposals_of(dataset, index, i))
            if len(shard) == 64 or i == todo[-1]:
                store.write_shard(shard)
                shard = []
        return len(todo)

    def proposals_of(self, dataset, index: FeatureIndex, i: int) -> tuple[int, str, np.ndarray, tuple[int, ...]]:
        """Image ``i``'s proposal map on the EM's label grid, as a store record (ids as rows; meta: grid, count)."""
        from datus.masks import upsample_nearest

        fmap = torch.from_numpy(np.asarray(index[i], dtype=np.float32))  # (D, h, w)
        grid = tuple(fmap.shape[1:])
        masks = principal_masks(fmap.flatten(1).T, threshold=self.threshold, coverage=self.coverage,
                                patience=self.patience)
        masks = median_filter(masks, grid)
        masks = masks[masks.flatten(1).any(dim=1)]  # a mask the filter emptied is no proposal
        image = dataset.load(i)["image"].permute(1, 2, 0).numpy() if self.proposal_crf is not None else None
        size = index.orig_size(i) if image is None else image.shape[:2]
        full = proposal_map(masks, size, image, self.proposal_crf)
        labels = upsample_nearest(full, (grid[0] * self.label_scale, grid[1] * self.label_scale))
        return i, index.stem(i), labels.reshape(-1, 1), (*labels.shape, len(masks))

    def _fit(self, index: FeatureIndex, store: ArrayStore, folder: Path, path: Path, *, k: int, seed: int) -> None:
        from torch.utils.data import DataLoader

        from datus.training import folder_trainer

        start = time.monotonic()
        centroids = self.kmeans_start(index, k=k, seed=seed)
        pl.seed_everything(seed, workers=True, verbose=False)
        module = PriMaPsModule(torch.from_numpy(centroids), decay=self.decay, ema_every=self.ema_every, lr=self.lr,
                               gamma=self.gamma)
        pairs = ProposalPairs(index, store)
        start_vote = self.start_vote(module, pairs)  # draws no random number: the EM's draws stay as they were
        final_loss = None
        if self.steps:
            loader = DataLoader(pairs, batch_size=min(self.batch_size, len(pairs)), shuffle=True, drop_last=True,
                                collate_fn=list)
            trainer, resume = folder_trainer(folder, accelerator=self.accelerator,
                                             checkpoint_every={"every_n_train_steps": self.checkpoint_every},
                                             max_steps=self.steps, max_epochs=-1, log_every_n_steps=10)
            log.info("PriMaPs-EM: %d images, %d steps of %d, K=%d (%s)", len(pairs), self.steps, loader.batch_size,
                     k, folder)
            trainer.fit(module, loader, ckpt_path=resume)
            final_loss = float(trainer.callback_metrics.get("train/loss", torch.tensor(float("nan"))))
        save_artefact(path, "PriMaPs-EM prototypes", EM_VERSION, module.teacher.state_dict(),
                      {"dim": int(centroids.shape[1]), "k": int(k), "seconds": time.monotonic() - start,
                       "final_loss": final_loss, "start_vote": start_vote})

    @staticmethod
    def start_vote(module: PriMaPsModule, pairs: ProposalPairs) -> dict[str, Any]:
        """How much of the k-means start (``module``'s teacher before any step) the proposals' majority vote
        keeps, without labels: the EM learns the voted labels, so where the proposals span several clusters
        it learns a coarser labelling and clusters that win no proposal die. Logged as a warning when it
        keeps under 80% or a cluster loses every pixel."""
        k = module.student.k
        kept = inside = 0
        pixels = np.zeros(k, dtype=np.int64)
        for features, proposals in pairs:
            labels = module.teacher_labels(features, tuple(proposals.shape))
            image_kept, image_inside, image_pixels = vote_kept(labels, proposals, k)
            kept, inside, pixels = kept + image_kept, inside + image_inside, pixels + image_pixels
        report = {"kept": round(kept / max(inside, 1), 4), "clusters_voted": int((pixels > 0).sum()), "k": k}
        if report["kept"] < 0.8 or report["clusters_voted"] < k:
            log.warning("PriMaPs-EM: the majority vote inside the proposals keeps %.0f%% of the k-means start's "
                        "pixel labels, and %d of the K=%d clusters keep any pixel; the EM learns this coarser "
                        "labelling (proposals larger than the classes: see docs/peers.md)",
                        100 * report["kept"], report["clusters_voted"], k)
        return report

    def kmeans_start(self, index: FeatureIndex, *, k: int, seed: int) -> np.ndarray:
        """``(K, D)`` spherical k-means centroids of a seeded sample of ``init_points`` patch features."""
        from datus.labeling import KMeans

        rng = np.random.default_rng(seed)
        indices = sorted(index.entries)
        per_image = max(1, self.init_points // max(len(indices), 1))
        rows = []
        for i in indices:
            fmap = np.asarray(index[i], dtype=np.float32).reshape(index[i].shape[0], -1).T
            rows.append(fmap[rng.choice(len(fmap), size=min(per_image, len(fmap)), replace=False)])
        kmeans = KMeans(k, seed=seed, spherical=True, center=False, overcluster=1).fit(np.concatenate(rows))
        return kmeans.centroids

    @staticmethod
    @torch.no_grad()
    def logits(teacher: Prototypes, index: FeatureIndex, i: int) -> torch.Tensor:
        """The teacher's ``(K, h, w)`` logits of image ``i`` on its patch grid."""
        return teacher(torch.from_numpy(np.asarray(index[i], dtype=np.float32))[None])[0]


class ProposalPairs(torch.utils.data.Dataset):
    """``(features (D, h, w) float32, proposals (H, W) uint8)`` of every image with both."""

    def __init__(self, index: FeatureIndex, store: ArrayStore) -> None:
        self.index = index
        self.proposals = {r.index: r for r in store}
        self.indices = [i for i in sorted(index.entries) if i in self.proposals]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.indices[position]
        record = self.proposals[i]
        labels = np.asarray(record.rows, dtype=np.float32).reshape(record.meta[0], record.meta[1]).astype(np.uint8)
        return torch.from_numpy(np.ascontiguousarray(self.index[i], dtype=np.float32)), torch.from_numpy(labels)
