"""Discovery on Lightning's predict loop: devices, DDP and the progress bar come from Lightning."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from datus.backbones import Backbone
from datus.discovery.decompose import SceneDecomposer
from datus.discovery.store import TIMING_KEYS, ImageSegments, SegmentStore
from datus.io import save_figure, write_json


def collate_items(items: list[dict]) -> dict[str, Any]:
    """Keep readable items (images may differ in size) and skipped ones apart."""
    good = [item for item in items if "error" not in item]
    return {
        "items": good,
        "skipped": [{"stem": i["stem"], "index": i["index"], "error": i["error"]} for i in items if "error" in i],
    }


class DiscoveryModule(pl.LightningModule):
    """``predict_step``: backbone forward on a batch, then one decomposition per image."""

    def __init__(self, backbone: Backbone, decomposer: SceneDecomposer) -> None:
        super().__init__()
        self.backbone = backbone
        self.decomposer = decomposer

    def _forward_group(self, items: list[dict]) -> list[tuple[dict, Any, int]]:
        images = torch.stack([item["image"] for item in items]).to(self.device)
        start = time.perf_counter()
        out = self.backbone(self.backbone.normalize(images))
        graph = out.features(self.decomposer.feature)
        segment = out.features(self.decomposer.segment_feature)
        if images.is_cuda:
            torch.cuda.synchronize()
        backbone_ms = 1e3 * (time.perf_counter() - start) / len(items)
        need_bias = self.decomposer.affinity.debias == "remove_key_bias"
        key_bias = self.backbone.key_bias() if need_bias else None
        results = []
        for i, item in enumerate(items):
            dec = self.decomposer(graph[i], out.grid, segment[i], key_bias)
            dec.timings["backbone_ms"] = backbone_ms
            results.append((item, dec, out.grid))
        return results

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        groups: dict[tuple, list[dict]] = {}
        for item in batch["items"]:
            groups.setdefault(tuple(item["image"].shape), []).append(item)
        records, images = [], {}
        for items in groups.values():
            for item, dec, grid in self._forward_group(items):
                records.append(ImageSegments(
                    stem=item["stem"], index=int(item["index"]), grid=tuple(grid),
                    input_size=tuple(item["image"].shape[-2:]),
                    orig_size=tuple(item.get("orig_size", item["image"].shape[-2:])),
                    decomposition=dec,
                ))
                images[int(item["index"])] = item["image"]
        return {"records": records, "skipped": batch["skipped"], "images": images}


class SegmentWriter(BasePredictionWriter):
    """Buffers decompositions into shards of ``shard_size`` images; draws the first few images.

    A shard is written only when full (or at the end), atomically, so a killed run loses at
    most one shard of work and never leaves a partial file that a later step would read.
    """

    def __init__(self, store: SegmentStore, shard_size: int = 256, pictures: set[int] | None = None,
                 picture_dir: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.store, self.shard_size = store, int(shard_size)
        self.pictures = pictures or set()
        self.picture_dir = Path(picture_dir) if picture_dir else None
        self.buffer: list[ImageSegments] = []
        self.skipped: list[dict] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.skipped.extend(prediction["skipped"])
        for record in prediction["records"]:
            self.buffer.append(record)
            if record.index in self.pictures and self.picture_dir is not None:
                from datus.figures import decomposition_figure

                image = prediction["images"][record.index].permute(1, 2, 0).cpu().numpy()
                fig = decomposition_figure(image, record.decomposition, title=record.stem)
                save_figure(self.picture_dir / f"{record.stem}.png", fig)
        if len(self.buffer) >= self.shard_size:
            self.flush(trainer.global_rank)

    def flush(self, rank: int) -> None:
        if self.buffer:
            self.store.write_shard(self.buffer, rank=rank)
            self.buffer = []
        if self.skipped:
            first = min(s["index"] for s in self.skipped)
            write_json(self.store.folder / f"skipped-{rank:03d}-{first:09d}.json", self.skipped)
            self.skipped = []

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self.flush(trainer.global_rank)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Every buffered record is complete: keep them, so a rerun resumes after them.
        self.flush(trainer.global_rank)


def read_skipped(folder: Path) -> list[dict]:
    """Skipped images recorded by every rank, deduplicated by index (latest wins)."""
    by_index: dict[int, dict] = {}
    for path in sorted(folder.glob("skipped-*.json")):
        for entry in json.loads(path.read_text()):
            by_index[int(entry["index"])] = entry
    return [by_index[i] for i in sorted(by_index)]


def summarize(store: SegmentStore) -> dict[str, Any]:
    """Counts and per-stage timings over everything in ``store``."""
    segments = valid = images = 0
    communities = []
    timings: dict[str, list[float]] = {k: [] for k in TIMING_KEYS}
    for record in store:
        dec = record.decomposition
        images += 1
        segments += dec.segment_valid.size
        valid += dec.num_valid
        communities.append(int(dec.communities.max()) + 1)
        for key in TIMING_KEYS:
            if key in dec.timings:
                timings[key].append(dec.timings[key])
    done = store.done_indices()
    skipped = [s for s in read_skipped(store.folder) if s["index"] not in done]
    return {
        "images": images,
        "segments": segments,
        "valid_segments": valid,
        "per_image": {
            "communities": float(np.mean(communities)) if communities else 0.0,
            "segments": segments / max(images, 1),
            "valid_segments": valid / max(images, 1),
        },
        "ms_per_image": {k: float(np.mean(v)) for k, v in timings.items() if v},
        "skipped": skipped,
    }
