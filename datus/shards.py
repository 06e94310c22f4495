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

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from datus.io import file_fingerprint, write_npz

log = logging.getLogger(__name__)


def collate_items(items: list[dict]) -> dict[str, Any]:
    """Keep readable items (images may differ in size) and skipped ones apart."""
    good = [item for item in items if "error" not in item]
    return {
        "items": good,
        "skipped": [{"stem": i["stem"], "index": i["index"], "error": i["error"]} for i in items if "error" in i],
    }


class DamagedShardError(RuntimeError):
    """A shard could not be read (truncated, garbled): it has been moved aside; a rerun recomputes its images."""


#: What numpy and zipfile raise on a truncated or garbled ``.npz``.
_DAMAGE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def read_skipped(folder: Path) -> list[dict]:
    """Images a writer recorded as unreadable (``skipped-*.json``, every rank), latest entry per index."""
    by_index: dict[int, dict] = {}
    for path in sorted(Path(folder).glob("skipped-*.json")):
        for entry in json.loads(path.read_text()):
            by_index[int(entry["index"])] = entry
    return [by_index[i] for i in sorted(by_index)]


#: What a split holds, image by image: ``(stem, fingerprint)`` in dataset order (see :func:`dataset_manifest`).
Manifest = list[tuple[str, str]]


def dataset_manifest(dataset) -> Manifest | None:
    """``(stem, fingerprint)`` of every image of ``dataset`` in its order, or None for a dataset of no files."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return None
    return [(s.stem, file_fingerprint(s.image)) for s in samples]


class ShardStore:
    """The shards under ``folder``: naming, atomic writes, which images they hold, ordered reading.

    With a ``manifest`` (the split's images now, :func:`dataset_manifest`) every record is
    matched to the split by its image's name and fingerprint, never by position: an image
    added to the split (wherever it sorts), removed or replaced under the same name is seen as
    missing, gone or changed, so it is computed, ignored or recomputed, and every record that
    still matches is reused under its current index. Without one, records are the dataset
    indices they were written with (a store the caller knows to be current).

    Subclasses define :meth:`write_shard` (records -> one shard, via :meth:`identity_arrays`)
    and :meth:`read_shard` (one shard -> records with an ``index`` attribute, in stored order).
    """

    def __init__(self, folder: str | Path, manifest: Manifest | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = manifest

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz"))

    def shard_path(self, images: list[tuple[int, str]], rank: int = 0, suffix: str = ".npz") -> Path:
        """``shard-<rank>-<first index>-<digest of its images>``: a shard of other images (e.g. one
        image added in front of the split) never takes the name of, and replaces, an earlier shard."""
        token = hashlib.sha1("\n".join(f"{i}\0{stem}\0{self.fingerprint(i)}" for i, stem in images).encode())
        return self.folder / f"shard-{rank:03d}-{min(i for i, _ in images):09d}-{token.hexdigest()[:8]}{suffix}"

    def save_arrays(self, path: Path, arrays: dict[str, np.ndarray]) -> Path:
        """``arrays`` as one ``.npz`` at ``path``, atomically (never pickled)."""
        return write_npz(path, **arrays)

    def fingerprint(self, index: int) -> str:
        """The fingerprint the manifest gives image ``index`` ("" without a manifest)."""
        return "" if self.manifest is None else self.manifest[index][1]

    def identity_arrays(self, indices: list[int]) -> dict[str, np.ndarray]:
        """What a shard records of its images' files, so later runs can tell whether they changed."""
        return {"fingerprints": np.array([self.fingerprint(i) for i in indices], dtype=str)}

    def write_shard(self, records: list, rank: int = 0) -> Path:
        raise NotImplementedError

    def read_shard(self, path: Path) -> Iterator:
        raise NotImplementedError

    def locate(self) -> dict[int, tuple[Path, int]]:
        """Current dataset index -> (shard, position in it) of every stored image that still matches
        the split (reads only the index arrays; the first shard holding an image wins)."""
        stored: dict[Any, tuple[Path, int]] = {}
        for shard in self.shards():
            try:
                with np.load(shard, allow_pickle=False) as z:
                    indices, stems = z["indices"], z["stems"]
                    fingerprints = z["fingerprints"] if "fingerprints" in z.files else None
            except _DAMAGE as err:
                self.set_aside(shard, err)  # its images count as missing: this run recomputes them
                continue
            for j, index in enumerate(indices):
                if self.manifest is None:
                    stored.setdefault(int(index), (shard, j))
                elif fingerprints is not None:  # a record of unknown contents is never reused
                    stored.setdefault((str(stems[j]), str(fingerprints[j])), (shard, j))
        if self.manifest is None:
            return stored
        return {i: stored[key] for i, key in enumerate(self.manifest) if key in stored}

    def set_aside(self, shard: Path, error: BaseException) -> Path:
        """Move a damaged ``shard`` to ``<name>.damaged`` (kept for inspection, never read again)."""
        target = shard.with_name(shard.name + ".damaged")
        os.replace(shard, target)
        log.warning("damaged shard %s (%s: %s): moved to %s; its images will be recomputed",
                    shard, type(error).__name__, error, target.name)
        return target

    def load(self, shard: Path) -> list:
        """Every record of ``shard``; a shard whose data cannot be read is set aside, naming it."""
        try:
            return list(self.read_shard(shard))
        except _DAMAGE as err:
            target = self.set_aside(shard, err)
            raise DamagedShardError(f"{shard} is damaged ({type(err).__name__}: {err}); it was moved to "
                                    f"{target.name}: rerun the same command to recompute its images") from None

    def done_indices(self) -> set[int]:
        """Current dataset indices already in a finished shard (and still matching the split)."""
        return set(self.locate())

    def skipped(self) -> list[dict]:
        """Images a writer recorded as unreadable that still match the split, with their current index."""
        entries = read_skipped(self.folder)
        if self.manifest is None:
            return entries
        current = {key: i for i, key in enumerate(self.manifest)}
        out = []
        for entry in entries:
            i = current.get((entry["stem"], entry.get("fingerprint")))
            if i is not None:
                out.append({**entry, "index": i})
        return sorted(out, key=lambda e: e["index"])

    @staticmethod
    def with_index(record: Any, index: int) -> Any:
        """``record`` under the current dataset ``index``."""
        if record.index == index:
            return record
        return dataclasses.replace(record, index=index) if dataclasses.is_dataclass(record) else record._replace(index=index)

    def __iter__(self) -> Iterator:
        """Every stored record that matches the split, in dataset order, under its current index.

        Shards are read whole, at most two held at a time (records of one shard are consecutive
        in dataset order, except images added or changed since, which sit in later shards).
        """
        where = self.locate()
        loaded: dict[Path, list] = {}
        for index in sorted(where):
            shard, position = where[index]
            if shard not in loaded:
                if len(loaded) >= 2:
                    loaded.pop(next(iter(loaded)))
                loaded[shard] = self.load(shard)
            yield self.with_index(loaded[shard][position], index)


class ShardLookup:
    """``lookup[index]`` -> that image's record (current index), one shard in memory (sequential access)."""

    def __init__(self, store: ShardStore) -> None:
        self.store, self.where = store, store.locate()
        self._shard: Path | None = None
        self._records: list = []

    def __contains__(self, index: int) -> bool:
        return index in self.where

    def __len__(self) -> int:
        return len(self.where)

    def indices(self) -> list[int]:
        return sorted(self.where)

    def record(self, index: int) -> Any:
        shard, position = self.where[index]
        if shard != self._shard:
            self._records = self.store.load(shard)
            self._shard = shard
        return self.store.with_index(self._records[position], index)

    def __getitem__(self, index: int) -> Any:
        return self.record(index)


class ShardWriter(BasePredictionWriter):
    """Buffers a predict loop's records and writes a shard every ``shard_size`` images (and at the end).

    A predict step may return a :class:`~concurrent.futures.Future` (work it left running in a
    background thread, e.g. the scene decomposition of the batch it just forwarded): the writer
    takes predictions in order and waits for a future only when the next batch's prediction has
    arrived, so that work overlaps the next forward. On an exception (Ctrl+C, SIGTERM) the
    complete records, finished background work included, are written too, so a rerun resumes after them.
    """

    def __init__(self, store: ShardStore, shard_size: int = 256) -> None:
        super().__init__(write_interval="batch")
        self.store, self.shard_size = store, int(shard_size)
        self.buffer: list = []
        self.pending: deque = deque()

    def add(self, prediction: Any) -> None:
        """Take one batch's prediction (here: a list of records)."""
        self.buffer.extend(prediction)

    def _take(self, rank: int, keep: int) -> None:
        """Add the pending predictions in order, leaving at most ``keep`` unfinished ones queued."""
        while self.pending and (len(self.pending) > keep or _finished(self.pending[0])):
            item = self.pending.popleft()
            self.add(item.result() if isinstance(item, Future) else item)
            if len(self.buffer) >= self.shard_size:
                self.flush(rank)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.pending.append(prediction)
        self._take(trainer.global_rank, keep=1)

    def flush(self, rank: int) -> None:
        if self.buffer:
            self.store.write_shard(self.buffer, rank)
            self.buffer = []

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._take(trainer.global_rank, keep=0)
        self.flush(trainer.global_rank)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        try:
            self._take(trainer.global_rank, keep=0)
        except Exception:  # noqa: BLE001 - background work that failed: keep what finished before it
            pass
        finally:
            self.pending.clear()
            self.flush(trainer.global_rank)


def _finished(item: Any) -> bool:
    return not isinstance(item, Future) or item.done()


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
        return self.save_arrays(self.shard_path([(r[0], r[1]) for r in records], rank), {
            **self.identity_arrays([r[0] for r in records]),
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
