"""Per-image feature arrays (segment crops' embeddings, patch tokens) in atomic ``.npz`` shards.

``<folder>/shard-<rank>-<first index>.npz`` holds ``indices`` (n,), ``stems`` (n,),
``offsets`` (n + 1,), ``features`` (rows, D) float16 and ``meta`` (n, m) int64 (e.g. patch
grid and original size); image i owns rows ``offsets[i]:offsets[i+1]``. Finished shards are never rewritten: reruns skip their images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pytorch_lightning.callbacks import BasePredictionWriter

from datus.io import atomic_write, shard_indices


class ArrayStore:
    """Read and write per-image ``(rows, D)`` arrays under ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz"))

    def write_shard(self, items: list[tuple[int, str, np.ndarray, tuple[int, ...]]], rank: int = 0) -> Path:
        arrays = {
            "indices": np.array([it[0] for it in items], dtype=np.int64),
            "stems": np.array([it[1] for it in items], dtype=str),
            "offsets": np.cumsum([0] + [len(it[2]) for it in items]).astype(np.int64),
            "features": np.concatenate([it[2] for it in items]).astype(np.float16),
            "meta": np.array([it[3] for it in items], dtype=np.int64).reshape(len(items), -1),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = self.folder / f"shard-{rank:03d}-{min(it[0] for it in items):09d}.npz"
        return atomic_write(path, lambda f: f.write(buffer.getvalue()))

    def done_indices(self) -> set[int]:
        """Dataset indices already in a finished shard (cheap: reads only the index arrays)."""
        return shard_indices(self.shards())

    def read(self) -> dict[int, tuple[str, np.ndarray, tuple[int, ...]]]:
        """Dataset index -> ``(stem, (rows, D) float16 array, meta)``."""
        out: dict[int, tuple[str, np.ndarray, tuple[int, ...]]] = {}
        for shard in self.shards():
            with np.load(shard, allow_pickle=False) as z:
                offsets, feats, meta, stems = z["offsets"], z["features"], z["meta"], z["stems"]
                for j, index in enumerate(z["indices"]):
                    out[int(index)] = (str(stems[j]), feats[offsets[j] : offsets[j + 1]],
                                       tuple(int(v) for v in meta[j]))
        return out


class ArrayLookup:
    """``lookup[index]`` -> that image's ``(rows, D)`` float16 array, one shard in memory at a time.

    For sequential access (labelling walks the images in dataset order), so the features of a
    whole split never have to fit in memory at once.
    """

    def __init__(self, store: ArrayStore) -> None:
        self.where: dict[int, Path] = {}
        for shard in store.shards():
            with np.load(shard, allow_pickle=False) as z:
                for index in z["indices"]:
                    self.where.setdefault(int(index), shard)
        self._shard: Path | None = None
        self._rows: dict[int, np.ndarray] = {}

    def __contains__(self, index: int) -> bool:
        return index in self.where

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, index: int) -> np.ndarray:
        shard = self.where[index]
        if shard != self._shard:
            with np.load(shard, allow_pickle=False) as z:
                offsets, feats = z["offsets"], z["features"]
                self._rows = {int(i): feats[offsets[j]:offsets[j + 1]] for j, i in enumerate(z["indices"])}
            self._shard = shard
        return self._rows[index]


class ArrayWriter(BasePredictionWriter):
    """Buffers ``(index, stem, array)`` predictions and writes a shard every ``shard_size`` images."""

    def __init__(self, store: ArrayStore, shard_size: int = 256) -> None:
        super().__init__(write_interval="batch")
        self.store, self.shard_size = store, int(shard_size)
        self.buffer: list[tuple[int, str, np.ndarray, tuple[int, ...]]] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.buffer.extend(prediction)
        if len(self.buffer) >= self.shard_size:
            self.flush(trainer.global_rank)

    def flush(self, rank: int) -> None:
        if self.buffer:
            self.store.write_shard(self.buffer, rank)
            self.buffer = []

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self.flush(trainer.global_rank)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.flush(trainer.global_rank)


def predict_missing(module, dataset, store: ArrayStore, make_trainer, batch_size: int, num_workers: int,
                    shard_size: int, min_size: int, indices: list[int] | None = None) -> int:
    """Run ``module`` (a predict step returning ``(index, stem, rows, meta)``) over the images
    (of ``indices``) not yet in ``store``, writing shards; returns how many it ran.

    Unreadable images are skipped (discovery lists them). Every rank returns only after all
    ranks have written their shards (DDP).
    """
    from torch.utils.data import DataLoader, Subset

    from datus.data import SkipUnreadable
    from datus.discovery.module import collate_items

    done = store.done_indices()
    todo = [i for i in (range(len(dataset)) if indices is None else indices) if i not in done]
    if todo:
        trainer = make_trainer()
        trainer.callbacks.append(ArrayWriter(store, shard_size))
        loader = DataLoader(Subset(SkipUnreadable(dataset, min_size), todo), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=collate_items)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        trainer.strategy.barrier()
    return len(todo)
