"""Frozen-backbone patch features of a split, computed once per image and cached: what every stage
that reads a frozen backbone more than once shares (the patch baseline and STEGO's probe, the
feature head, PriMaPs-EM, the refinement heads).

The backbone is frozen, so nothing needs it twice: every image's feature map is computed once
(:class:`FeatureExtractor`, a Lightning predict loop that resumes like discovery) and kept in a
:class:`FeatureStore`, whose shards are plain ``.npy`` files that are memory-mapped when read.
Training then reads one image's map at a time in random order, so memory does not grow with the
split; flips and crops act on the cached maps and the masks together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from datus.backbones import PATCH_FEATURES, Backbone
from datus.io import atomic_write, write_npz
from datus.shards import ArrayRecord, ArrayStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSpec:
    """Which per-patch features a head sees: last-block ``names`` and the tokens of ``blocks``, concatenated.

    ``names`` are :data:`datus.backbones.PATCH_FEATURES` (``keys`` by default: the DatUS² graph's
    feature); ``blocks`` adds the normalised output tokens of earlier blocks (negative indices
    count from the end), as STEGO and CAUSE concatenate several depths.
    """

    names: tuple[str, ...] = ("keys",)
    blocks: tuple[int, ...] = ()
    #: each patch's features L2-normalised (each name and block on its own) before they are stored
    normalized: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if not self.names and not self.blocks:
            raise ValueError("features: name at least one feature (features.names) or block (features.blocks)")
        unknown = [n for n in self.names if n not in PATCH_FEATURES]
        if unknown:
            raise ValueError(f"features.names={list(self.names)}: {unknown} unknown; choose from {PATCH_FEATURES}")

    def dim(self, backbone: Backbone) -> int:
        """Channels of the concatenated map (each feature is ``embed_dim`` wide)."""
        backbone.block_indices(self.blocks)  # unknown blocks fail here, before any image is read
        return backbone.embed_dim * (len(self.names) + len(self.blocks))

    def as_dict(self) -> dict[str, list]:
        return {"names": list(self.names), "blocks": list(self.blocks), **({"normalized": True} if self.normalized else {})}


@torch.no_grad()
def feature_maps(backbone: Backbone, images: Tensor, spec: FeatureSpec) -> Tensor:
    """``(B, D, h, w)`` float32 maps of ``spec`` for uint8 or [0, 1] RGB ``images`` (sizes multiples of the patch)."""
    out = backbone(backbone.normalize(images), blocks=backbone.block_indices(spec.blocks))
    parts = [out.features(name) for name in spec.names]
    parts += [out.hidden[i] for i in backbone.block_indices(spec.blocks)]
    if spec.normalized:
        parts = [torch.nn.functional.normalize(p.float(), dim=-1) for p in parts]
    x = torch.cat(parts, dim=-1).float()  # (B, h*w, D)
    h, w = out.grid
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class FeatureStore(ArrayStore):
    """An :class:`ArrayStore` whose rows sit in a ``.npy`` beside each shard's index, memory-mapped on read.

    ``shard-<rank>-<first>.npy`` holds the float16 rows, ``shard-<rank>-<first>.npz`` the
    ``indices``, ``stems``, ``offsets`` and ``meta`` (patch grid h, w and original size H, W).
    The rows are written first and the index last, both atomically: an index names complete
    rows only, and a killed writer's rows are rewritten by the rerun.
    """

    def write_shard(self, items: list[tuple[int, str, np.ndarray, tuple[int, ...]]], rank: int = 0) -> Path:
        name = f"shard-{rank:03d}-{min(it[0] for it in items):09d}"
        rows = np.concatenate([it[2] for it in items]).astype(np.float16)
        atomic_write(self.folder / f"{name}.npy", lambda f: np.save(f, rows))
        index = {
            "indices": np.array([it[0] for it in items], dtype=np.int64),
            "stems": np.array([it[1] for it in items], dtype=str),
            "offsets": np.cumsum([0] + [len(it[2]) for it in items]).astype(np.int64),
            "meta": np.array([it[3] for it in items], dtype=np.int64).reshape(len(items), -1),
        }
        return write_npz(self.folder / f"{name}.npz", **index)

    def read(self):  # pragma: no cover - the whole split at once is what this store avoids
        raise NotImplementedError("FeatureStore is read image by image: use FeatureStore.open()")

    def open(self) -> FeatureIndex:
        return FeatureIndex(self)


class FeatureIndex:
    """``index[i]`` -> image ``i``'s ``(D, h, w)`` float16 map (a view of a memory-mapped shard)."""

    def __init__(self, store: FeatureStore) -> None:
        self.folder = store.folder
        #: how many maps the :class:`FeatureCache` call that opened this index computed (0: all were cached)
        self.computed_this_run = 0
        self.entries: dict[int, tuple[Path, int, int, tuple[int, int], tuple[int, int], str]] = {}
        for shard in store.shards():
            with np.load(shard, allow_pickle=False) as z:
                offsets, meta, stems = z["offsets"], z["meta"], z["stems"]
                for j, index in enumerate(z["indices"]):
                    h, w, height, width = (int(v) for v in meta[j][:4])
                    self.entries.setdefault(int(index), (shard.with_suffix(".npy"), int(offsets[j]), int(offsets[j + 1]),
                                                         (h, w), (height, width), str(stems[j])))
        self._maps: dict[Path, np.ndarray] = {}

    def __contains__(self, index: int) -> bool:
        return index in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def grid(self, index: int) -> tuple[int, int]:
        return self.entries[index][3]

    def orig_size(self, index: int) -> tuple[int, int]:
        return self.entries[index][4]

    def stem(self, index: int) -> str:
        return self.entries[index][5]

    def record(self, index: int) -> ArrayRecord:
        """Image ``index``'s ``(h*w, D)`` float16 rows as an :class:`~datus.shards.ArrayRecord` (meta: grid, size)."""
        path, start, stop, grid, size, stem = self.entries[index]
        rows = self._maps.get(path)
        if rows is None:
            rows = self._maps[path] = np.load(path, mmap_mode="r", allow_pickle=False)
        return ArrayRecord(index, stem, rows[start:stop], (*grid, *size))

    def records(self) -> dict[int, ArrayRecord]:
        """Every image's :meth:`record` (memory-mapped views: nothing is read until used)."""
        return {i: self.record(i) for i in sorted(self.entries)}

    def __getitem__(self, index: int) -> np.ndarray:
        path, start, stop, (h, w), _, _ = self.entries[index]
        rows = self._maps.get(path)
        if rows is None:
            rows = self._maps[path] = np.load(path, mmap_mode="r", allow_pickle=False)
        return rows[start:stop].reshape(h, w, -1).transpose(2, 0, 1)

    def __getstate__(self) -> dict:  # dataloader workers open their own memory maps
        return {**self.__dict__, "_maps": {}}


def warn_without_maps(dataset, indices: list[int], consequence: str) -> None:
    """Say that images ``indices`` of ``dataset`` have no feature map (skipped when the maps were
    computed), naming one, and ``consequence``: what that does to the numbers."""
    if indices:
        log.warning("%d of %d %s images have no feature map (skipped when the maps were computed: unreadable or "
                    "refused by the resize, e.g. %s): %s", len(indices), len(dataset), dataset.split,
                    dataset.samples[indices[0]].image, consequence)


class FeatureExtractor(pl.LightningModule):
    """``predict_step``: the ``spec`` feature map of each image, as ``(index, stem, (h*w, D) float16, meta)``."""

    def __init__(self, backbone: Backbone, spec: FeatureSpec) -> None:
        super().__init__()
        self.backbone, self.spec = backbone, spec

    def predict_step(self, batch: dict, batch_idx: int) -> list[tuple[int, str, np.ndarray, tuple[int, ...]]]:
        out = []
        for item in batch["items"]:
            fmap = feature_maps(self.backbone, item["image"][None].to(self.device), self.spec)[0]
            rows = fmap.flatten(1).T.to(torch.float16).cpu().numpy()
            orig = item.get("orig_size", tuple(item["image"].shape[-2:]))
            out.append((int(item["index"]), item["stem"], rows, (*fmap.shape[-2:], *orig)))
        return out



def dataset_identity(dataset) -> dict:
    """What names a split's contents for a cache key: its class, root, split and every image file's
    name and contents (an added, removed or replaced image gives a new key; a copy with new times does not)."""
    from datus.runs import files_fingerprint

    files = files_fingerprint([(s.stem, s.image) for s in getattr(dataset, "samples", [])])
    root = getattr(dataset, "root", None)
    return {"type": type(dataset).__name__, "name": getattr(dataset, "name", None),
            "root": None if root is None else str(Path(root).expanduser().resolve()),
            "split": getattr(dataset, "split", None), "images": len(dataset), "files": files}


class FeatureCache:
    """Feature maps of whole splits under ``<root>/features/<hash of settings>/`` (``root=None``: no reuse
    across runs, maps kept in ``fallback``), filled by a Lightning predict loop that resumes.

    The key covers the backbone settings, the resize, the feature spec and the split's files.
    """

    def __init__(self, root: str | Path | None, fallback: str | Path, make_trainer: Callable[[], pl.Trainer],
                 batch_size: int = 8, num_workers: int = 0, shard_size: int = 256) -> None:
        self.root, self.fallback = root, Path(fallback)
        self.make_trainer = make_trainer
        self.batch_size, self.num_workers, self.shard_size = int(batch_size), int(num_workers), int(shard_size)

    def folder(self, settings: dict, kind: str = "features") -> Path:
        """``<root>/<kind>/<hash of settings>`` (or under ``fallback`` without a root), created."""
        from datus.runs import cache_entry, settings_key

        if self.root is None:
            folder = self.fallback / kind / settings_key(settings)
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        return cache_entry(self.root, kind, settings)

    def index(self, dataset, *, backbone: Callable[[], Backbone], backbone_settings: dict, resize,
              spec: FeatureSpec) -> FeatureIndex:
        """The cached maps of every image of ``dataset`` (computed first where missing)."""
        import copy

        from datus.io import remove_stale_temporaries, write_json
        from datus.runs import backbone_identity, global_rank, job_lock
        from datus.shards import predict_missing

        settings = {"backbone": backbone_identity(dict(backbone_settings)), "resize": repr(resize), "features": spec.as_dict(),
                    "dataset": dataset_identity(dataset)}
        folder = self.folder(settings)
        remove_stale_temporaries(folder)
        store = FeatureStore(folder)
        computed = 0
        if len(store.done_indices()) < len(dataset):
            resized = copy.copy(dataset)
            resized.transform = resize
            # one lock per rank: under DDP every rank computes its share in one predict loop (rank 1,
            # waiting on rank 0's lock, would leave rank 0 waiting for it in the loop: a hang)
            with job_lock(folder / f".lock-rank{global_rank()}", f"feature maps in {folder}"):
                write_json(folder / "config.json", settings)
                model = backbone()
                computed = len(predict_missing(FeatureExtractor(model, spec), resized, store, self.make_trainer,
                                               min_size=model.patch_size, batch_size=self.batch_size,
                                               num_workers=self.num_workers, shard_size=self.shard_size))
            log.info("feature maps of %d images computed into %s", computed, folder)
        index = store.open()
        index.computed_this_run = computed
        return index
