"""Per-image results in atomic, resumable shards: the one store under every backbone pass.

Discovery's segments, labelling's crop and patch features and the refinement heads' feature
maps are all written the same way: a Lightning predict loop over the images not yet stored
(:func:`predict_missing`), a :class:`ShardWriter` that buffers its predictions and writes
``<folder>/shard-<rank>-<first index>.npz`` every ``shard_size`` images, atomically, and a
:class:`ShardStore` that reads them back image by image. A finished shard is never rewritten,
so a killed run loses at most one shard of work and a rerun computes only what is missing.
Formats (:class:`ArrayStore` here, ``datus.discovery.SegmentStore``) only say how their
records become arrays and back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from datus.io import atomic_write


def collate_items(items: list[dict]) -> dict[str, Any]:
    """Keep readable items (images may differ in size) and skipped ones apart."""
    good = [item for item in items if "error" not in item]
    return {
        "items": good,
        "skipped": [{"stem": i["stem"], "index": i["index"], "error": i["error"]} for i in items if "error" in i],
    }


def read_skipped(folder: Path) -> list[dict]:
    """Images a writer recorded as unreadable (``skipped-*.json``, every rank), latest entry per index."""
    by_index: dict[int, dict] = {}
    for path in sorted(Path(folder).glob("skipped-*.json")):
        for entry in json.loads(path.read_text()):
            by_index[int(entry["index"])] = entry
    return [by_index[i] for i in sorted(by_index)]


def _first_index(shard: Path) -> int:
    return int(shard.stem.split("-")[-1])


class ShardStore:
    """The shards under ``folder``: naming, atomic writes, which images they hold, ordered reading.

    Subclasses define :meth:`write_shard` (records -> one shard) and :meth:`read_shard`
    (one shard -> records with an ``index`` attribute, the dataset index).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz"))

    def shard_path(self, first_index: int, rank: int = 0, suffix: str = ".npz") -> Path:
        return self.folder / f"shard-{rank:03d}-{first_index:09d}{suffix}"

    def save_arrays(self, path: Path, arrays: dict[str, np.ndarray]) -> Path:
        """``arrays`` as one ``.npz`` at ``path``, atomically (never pickled)."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write(path, lambda f: f.write(buffer.getvalue()))

    def write_shard(self, records: list, rank: int = 0) -> Path:
        raise NotImplementedError

    def read_shard(self, path: Path) -> Iterator:
        raise NotImplementedError

    def locate(self) -> dict[int, Path]:
        """Dataset index -> the shard holding it (reads only the index arrays; first shard wins)."""
        where: dict[int, Path] = {}
        for shard in self.shards():
            with np.load(shard, allow_pickle=False) as z:
                for index in z["indices"]:
                    where.setdefault(int(index), shard)
        return where

    def done_indices(self) -> set[int]:
        """Dataset indices already in a finished shard."""
        return set(self.locate())

    def __iter__(self) -> Iterator:
        """Every stored record in dataset order, one shard in memory at a time.

        An image stored twice (e.g. by two overlapping jobs) is yielded once. Each writer's
        shards hold increasing index ranges, so shards are read in order of their first index
        and records are held back only until no later shard can hold a smaller index (DDP
        ranks write interleaved indices).
        """
        shards = sorted(self.shards(), key=lambda p: (_first_index(p), p.name))
        seen: set[int] = set()
        pending: list = []
        for i, shard in enumerate(shards):
            pending.extend(r for r in self.read_shard(shard) if r.index not in seen)
            seen.update(r.index for r in pending)
            nxt = _first_index(shards[i + 1]) if i + 1 < len(shards) else None
            pending.sort(key=lambda r: r.index)
            ready = [r for r in pending if nxt is None or r.index < nxt]
            pending = [r for r in pending if not (nxt is None or r.index < nxt)]
            yield from ready


class ShardLookup:
    """``lookup[index]`` -> that image's record, keeping one shard in memory (for sequential access)."""

    def __init__(self, store: ShardStore) -> None:
        self.store, self.where = store, store.locate()
        self._shard: Path | None = None
        self._records: dict[int, Any] = {}

    def __contains__(self, index: int) -> bool:
        return index in self.where

    def __len__(self) -> int:
        return len(self.where)

    def indices(self) -> list[int]:
        return sorted(self.where)

    def record(self, index: int) -> Any:
        shard = self.where[index]
        if shard != self._shard:
            self._records = {r.index: r for r in self.store.read_shard(shard)}
            self._shard = shard
        return self._records[index]

    def __getitem__(self, index: int) -> Any:
        return self.record(index)


class ShardWriter(BasePredictionWriter):
    """Buffers a predict loop's records and writes a shard every ``shard_size`` images (and at the end).

    On an exception (Ctrl+C, SIGTERM) the complete records in the buffer are written too, so a
    rerun resumes after them.
    """

    def __init__(self, store: ShardStore, shard_size: int = 256) -> None:
        super().__init__(write_interval="batch")
        self.store, self.shard_size = store, int(shard_size)
        self.buffer: list = []

    def add(self, prediction: Any) -> None:
        """Take one batch's prediction (here: a list of records)."""
        self.buffer.extend(prediction)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.add(prediction)
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


def predict_missing(
    module: pl.LightningModule,
    dataset,
    store: ShardStore,
    make_trainer: Callable[[], pl.Trainer],
    *,
    min_size: int,
    batch_size: int,
    num_workers: int,
    shard_size: int,
    indices: list[int] | range | None = None,
    writer: ShardWriter | None = None,
) -> list[int]:
    """Run ``module``'s predict step over the images (of ``indices``) not yet in ``store``; returns them.

    Images smaller than ``min_size`` or unreadable come out as ``error`` items (the writer may
    record them). Every rank returns only after all ranks have written their shards (DDP).
    """
    from torch.utils.data import DataLoader, Subset

    from datus.data import SkipUnreadable

    done = store.done_indices()
    todo = [i for i in (range(len(dataset)) if indices is None else indices) if i not in done]
    if todo:
        trainer = make_trainer()
        trainer.callbacks.append(writer or ShardWriter(store, shard_size))
        loader = DataLoader(Subset(SkipUnreadable(dataset, min_size), todo), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=collate_items, persistent_workers=False)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        trainer.strategy.barrier()  # every rank's shards are on disk before anyone reads the store
    return todo


class ArrayRecord(NamedTuple):
    """One image's rows: ``(rows, D)`` float16 features and integer ``meta`` (e.g. grid, original size)."""

    index: int
    stem: str
    rows: np.ndarray
    meta: tuple[int, ...]


class ArrayStore(ShardStore):
    """Per-image ``(rows, D)`` arrays (segment crop embeddings, patch features).

    A shard holds ``indices`` (n,), ``stems`` (n,), ``offsets`` (n + 1,), ``features`` (rows, D)
    float16 and ``meta`` (n, m) int64; image j owns rows ``offsets[j]:offsets[j+1]``.
    """

    def write_shard(self, records: list[tuple[int, str, np.ndarray, tuple[int, ...]]], rank: int = 0) -> Path:
        return self.save_arrays(self.shard_path(min(r[0] for r in records), rank), {
            "indices": np.array([r[0] for r in records], dtype=np.int64),
            "stems": np.array([r[1] for r in records], dtype=str),
            "offsets": np.cumsum([0] + [len(r[2]) for r in records]).astype(np.int64),
            "features": np.concatenate([r[2] for r in records]).astype(np.float16),
            "meta": np.array([r[3] for r in records], dtype=np.int64).reshape(len(records), -1),
        })

    def read_shard(self, path: Path) -> Iterator[ArrayRecord]:
        with np.load(path, allow_pickle=False) as z:
            offsets, feats, meta, stems, indices = z["offsets"], z["features"], z["meta"], z["stems"], z["indices"]
        for j, index in enumerate(indices):
            yield ArrayRecord(int(index), str(stems[j]), feats[offsets[j]:offsets[j + 1]],
                              tuple(int(v) for v in meta[j]))

    def read(self) -> dict[int, ArrayRecord]:
        """Dataset index -> record, the whole store at once (the patch baseline's k-means needs it all)."""
        return {r.index: r for r in self}


class ArrayLookup(ShardLookup):
    """``lookup[index]`` -> that image's ``(rows, D)`` float16 array, one shard in memory at a time."""

    def __getitem__(self, index: int) -> np.ndarray:
        return self.record(index).rows


class PredictLoop:
    """A split and how to run a predict loop over it: what every backbone pass of a method needs.

    ``run(module, store)`` is :func:`predict_missing` with these settings (the config's
    ``batch_size``, ``num_workers``, ``shard_size``; images smaller than ``min_size`` are skipped).
    """

    def __init__(self, dataset, make_trainer: Callable[[], pl.Trainer], *, min_size: int, batch_size: int,
                 num_workers: int, shard_size: int) -> None:
        self.dataset, self.make_trainer = dataset, make_trainer
        self.min_size, self.batch_size, self.num_workers, self.shard_size = min_size, batch_size, num_workers, shard_size

    def run(self, module: pl.LightningModule, store: ShardStore, *, indices: list[int] | range | None = None,
            writer: ShardWriter | None = None, make_trainer: Callable[[], pl.Trainer] | None = None) -> list[int]:
        return predict_missing(module, self.dataset, store, make_trainer or self.make_trainer,
                               min_size=self.min_size, batch_size=self.batch_size, num_workers=self.num_workers,
                               shard_size=self.shard_size, indices=indices, writer=writer)
