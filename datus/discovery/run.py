"""Run scene decomposition over a dataset split: resumable, atomic, with a summary and pictures."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import Dataset

from datus.backbones import Backbone
from datus.discovery.decompose import SceneDecomposer
from datus.discovery.module import DiscoveryModule, SegmentWriter, summarize
from datus.discovery.store import SegmentStore
from datus.io import write_json
from datus.runs import RunConflictError, check_settings
from datus.shards import dataset_manifest, predict_missing

__all__ = ["RunConflictError", "run_discovery"]

log = logging.getLogger(__name__)


def _claim(folder: Path, settings: dict[str, Any], overwrite: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if check_settings(folder / "config.json", settings, overwrite, what="segments"):
        shutil.rmtree(folder)
        folder.mkdir(parents=True)
        write_json(folder / "config.json", settings)


def run_discovery(
    backbone: Backbone,
    *,
    decomposer: SceneDecomposer,
    dataset: Dataset,
    trainer: pl.Trainer,
    out_dir: str | Path,
    batch_size: int,
    num_workers: int,
    shard_size: int,
    num_pictures: int,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
    indices: range | list[int] | None = None,
) -> dict[str, Any]:
    """Decompose every image of ``dataset`` into ``out_dir/segments`` and write ``summary.json``.

    Images already in a finished shard are skipped, so rerunning after a crash (same settings)
    finishes the job; ``settings`` (what produced the segments) guard against mixing runs.
    Unreadable images are skipped and listed by name in the summary. ``indices`` restricts
    the run to part of the split (one task of a sharded job); under DDP every rank returns
    after all ranks have written their shards.
    """
    out_dir = Path(out_dir)
    store = SegmentStore(out_dir / "segments", manifest=dataset_manifest(dataset))
    _claim(store.folder, settings or {}, overwrite)
    done = store.done_indices()
    if done:
        log.info("resuming: %d of %d images already decomposed", len(done), len(dataset))
    start = time.perf_counter()
    writer = SegmentWriter(store, shard_size, pictures=set(range(min(num_pictures, len(dataset)))),
                           picture_dir=out_dir / "pictures")
    todo = predict_missing(DiscoveryModule(backbone, decomposer), dataset, store, lambda: trainer,
                           min_size=backbone.patch_size, batch_size=batch_size, num_workers=num_workers,
                           shard_size=shard_size, indices=indices, writer=writer)
    summary = summarize(store)
    summary.update({
        "backbone": backbone.name,
        "weights": getattr(backbone, "weights_source", None),
        "dataset_size": len(dataset),
        "computed_this_run": len(todo),
        "seconds_this_run": time.perf_counter() - start,
        "segments_dir": str(store.folder),
        "pictures_dir": str(out_dir / "pictures"),
    })
    if trainer.is_global_zero:
        write_json(out_dir / "summary.json", summary)
    for entry in summary["skipped"]:
        log.warning("skipped %s: %s", entry["stem"], entry["error"])
    return summary
