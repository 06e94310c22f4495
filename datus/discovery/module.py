"""Discovery on Lightning's predict loop: devices, DDP and the progress bar come from Lightning."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from datus.backbones import Backbone
from datus.discovery.decompose import SceneDecomposer
from datus.discovery.store import TIMING_KEYS, ImageSegments, SegmentStore
from datus.io import save_figure, write_json
from datus.shards import ShardWriter


class DiscoveryModule(pl.LightningModule):
    """``predict_step``: backbone forward on a batch, then one decomposition per image.

    The decompositions (graph, Louvain, regions) run in one background thread while the loop goes
    on to load and forward the next batch: ``predict_step`` returns a future that the
    :class:`SegmentWriter` waits for one batch later. One thread, batches in order: the results are
    those of running them inline (igraph's random generator is global, so never two at once).
    """

    def __init__(self, backbone: Backbone, decomposer: SceneDecomposer) -> None:
        super().__init__()
        self.backbone = backbone
        self.decomposer = decomposer
        self._worker: ThreadPoolExecutor | None = None

    def _forward_group(self, items: list[dict]) -> tuple[list[dict], Any, Any, Any, float]:
        images = torch.stack([item["image"] for item in items]).to(self.device)
        start = time.perf_counter()
        out = self.backbone(self.backbone.normalize(images), blocks=self.decomposer.segment_blocks)
        graph = out.features(self.decomposer.feature)
        segment = self.decomposer.segment_input(out)
        if images.is_cuda:
            torch.cuda.synchronize()
        backbone_ms = 1e3 * (time.perf_counter() - start) / len(items)
        return items, graph, segment, out.grid, backbone_ms

    def _decompose(self, forwarded: list[tuple], skipped: list[dict]) -> dict[str, Any]:
        # runs in the worker thread, whose current CUDA device is its own: make it the module's
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()
        key_bias = self.backbone.key_bias() if self.decomposer.needs_key_bias else None
        records, images = [], {}
        with on_device:
            for items, graph, segment, grid, backbone_ms in forwarded:
                for i, item in enumerate(items):
                    image = item["image"] if self.decomposer.needs_image else None
                    dec = self.decomposer(graph[i], grid, segment[i], key_bias, image=image)
                    dec.timings["backbone_ms"] = backbone_ms
                    records.append(ImageSegments(
                        stem=item["stem"], index=int(item["index"]), grid=tuple(grid),
                        input_size=tuple(item["image"].shape[-2:]),
                        orig_size=tuple(item.get("orig_size", item["image"].shape[-2:])),
                        decomposition=dec,
                    ))
                    images[int(item["index"])] = item["image"]
        return {"records": records, "skipped": skipped, "images": images}

    def predict_step(self, batch: dict, batch_idx: int) -> Future:
        groups: dict[tuple, list[dict]] = {}
        for item in batch["items"]:
            groups.setdefault(tuple(item["image"].shape), []).append(item)
        forwarded = [self._forward_group(items) for items in groups.values()]
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datus-decompose")
        return self._worker.submit(self._decompose, forwarded, batch["skipped"])

    def on_predict_end(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


class SegmentWriter(ShardWriter):
    """Buffers decompositions into shards of ``shard_size`` images; records unreadable images and
    draws the decompositions of ``pictures`` (dataset indices) into ``picture_dir``."""

    def __init__(self, store: SegmentStore, shard_size: int = 256, pictures: set[int] | None = None,
                 picture_dir: str | Path | None = None) -> None:
        super().__init__(store, shard_size)
        self.pictures = pictures or set()
        self.picture_dir = Path(picture_dir) if picture_dir else None
        self.skipped: list[dict] = []

    def add(self, prediction: dict[str, Any]) -> None:
        self.skipped.extend(prediction["skipped"])
        for record in prediction["records"]:
            self.buffer.append(record)
            if record.index in self.pictures and self.picture_dir is not None:
                from datus.figures import decomposition_figure

                image = prediction["images"][record.index].permute(1, 2, 0).cpu().numpy()
                fig = decomposition_figure(image, record.decomposition, title=record.stem)
                save_figure(self.picture_dir / f"{record.stem}.png", fig)

    def flush(self, rank: int) -> None:
        super().flush(rank)
        if self.skipped:
            first = min(s["index"] for s in self.skipped)
            entries = [{**s, "fingerprint": self.store.fingerprint(s["index"])} for s in self.skipped]
            write_json(self.store.folder / f"skipped-{rank:03d}-{first:09d}.json", entries)
            self.skipped = []


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
    skipped = [s for s in store.skipped() if s["index"] not in done]
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
