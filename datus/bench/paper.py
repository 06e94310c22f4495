"""The authors' setting, timed three ways in one run: their per-image loop, our whole ``discover.py``
run, and the forward passes that run cannot avoid.

- :func:`authors_loop` re-implements the DatUS² authors' per-image procedure faithfully: one image
  per forward, a Python double loop over patch pairs for the binary key graph, a networkx graph
  clustered by python-louvain, a breadth-first search for each community's regions, then one
  forward per valid segment's crop for its CLS. (k-means over the split comes after, as ours.)
- :func:`whole_run` times ``python discover.py experiment=datus_paper ...`` in a fresh process,
  from start-up to ``metrics.json``, and reads where the time went from its ``summary.json``.
- :func:`forward_floor` times the forwards that run needs, alone: every image at the run's batch
  size, and every valid segment's crop batched as the run batches them (the run's own counts).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datus.bench.discovery import bench_device
from datus.io import load_json


def _authors_adjacency(keys: np.ndarray) -> np.ndarray:
    """Their graph: ``A[i, j] = 1`` where the dot product of two patches' keys is positive, pair by pair."""
    n = keys.shape[0]
    adjacency = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j and float(np.dot(keys[i], keys[j])) > 0:
                adjacency[i, j] = 1
    return adjacency


def _authors_regions(communities: np.ndarray) -> list[list[tuple[int, int]]]:
    """Their regions: a breadth-first search over 8-neighbours inside each community."""
    h, w = communities.shape
    seen = np.zeros((h, w), dtype=bool)
    regions = []
    for y in range(h):
        for x in range(w):
            if seen[y, x]:
                continue
            seen[y, x] = True
            queue, region = deque([(y, x)]), []
            while queue:
                cy, cx = queue.popleft()
                region.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx_ = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx_ < w and not seen[ny, nx_] \
                                and communities[ny, nx_] == communities[y, x]:
                            seen[ny, nx_] = True
                            queue.append((ny, nx_))
            regions.append(region)
    return regions


def authors_loop(backbone, decomposer, dataset, images: int, *, crop_size: int = 224) -> dict[str, Any]:
    """Seconds per image of the authors' procedure on the first ``images`` images, per step."""
    import networkx as nx
    from community import community_louvain

    from datus.labeling.embed import segment_crops

    steps = {k: 0.0 for k in ("forward", "adjacency", "louvain", "regions", "crop_forwards")}
    crops = 0
    key_bias = backbone.key_bias() if decomposer.needs_key_bias else None
    count = min(images, len(dataset))
    device = bench_device(backbone)
    for index in range(count):
        image = dataset[index]["image"]
        t0 = time.perf_counter()
        out = backbone(backbone.normalize(image[None].to(device)))
        keys = decomposer.affinity.prepare(out.features(decomposer.feature)[0], key_bias).cpu().numpy()
        t1 = time.perf_counter()
        adjacency = _authors_adjacency(keys)
        t2 = time.perf_counter()
        partition = community_louvain.best_partition(nx.from_numpy_array(adjacency),
                                                     resolution=decomposer.louvain.resolution,
                                                     random_state=decomposer.louvain.seed)
        communities = np.array([partition[i] for i in range(len(partition))]).reshape(out.grid)
        t3 = time.perf_counter()
        regions = [r for r in _authors_regions(communities) if len(r) > decomposer.min_patches]
        t4 = time.perf_counter()
        for region in regions:
            segments = np.zeros(out.grid, dtype=np.int64)
            segments[tuple(np.array(region).T)] = 1
            crop = segment_crops(image, segments, [1], backbone.patch_size, crop_size).to(device)
            _ = backbone(backbone.normalize(crop)).cls.cpu()  # the segment's feature (unused: timing only)
        t5 = time.perf_counter()
        crops += len(regions)
        for key, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            steps[key] += seconds
    per_image = {k: v / max(count, 1) for k, v in steps.items()}
    return {"images": count, "crops_per_image": crops / max(count, 1), "seconds_per_image": per_image,
            "total_per_image": sum(per_image.values()),
            "forwards_per_image": per_image["forward"] + per_image["crop_forwards"]}


def whole_run(overrides: list[str], out_dir: Path, *, script: Path) -> dict[str, Any]:
    """``python discover.py <overrides>`` into ``out_dir`` in a fresh process: wall seconds and its summary."""
    command = [sys.executable, str(script), *overrides, "cache_dir=null", "logger=none",
               "trainer.enable_progress_bar=false", f"hydra.run.dir={out_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=script.parent)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    summary = load_json(out_dir / "summary.json")
    stages = dict(summary.get("seconds", {}))
    passes = stages.pop("backbone_passes", 0.0)
    discovery, crops = summary.get("seconds_this_run", 0.0), summary.get("segment_features_seconds", 0.0)
    stages = {"start-up (imports, config, weights)": seconds - sum(stages.values()) - passes,
              **stages, "discovery (image forwards, graphs, Louvain, regions)": discovery,
              "crop embedding (crop forwards)": crops, "other backbone-pass work": passes - discovery - crops}
    for key in ("labels", "evaluation"):
        if key in stages:
            stages[key] = stages.pop(key)  # after the passes, in the order they run
    return {"seconds": seconds, "stages": stages, "summary": summary}


def crops_per_batch(segments_dir: Path, batch_size: int) -> list[int]:
    """How many crops each of the run's batches embedded (valid segments of ``batch_size`` images)."""
    from datus.discovery.store import SegmentStore

    valid = [record.decomposition.num_valid for record in SegmentStore(segments_dir)]
    return [sum(valid[i:i + batch_size]) for i in range(0, len(valid), batch_size)]


@torch.no_grad()
def forward_floor(backbone, *, images: int, batch_size: int, size: tuple[int, int], crops: list[int],
                  crop_size: int = 224, chunk: int = 64) -> dict[str, float]:
    """Seconds of the forwards alone: ``images`` inputs of ``size`` in batches of ``batch_size``, and
    each batch's crops (``crops``) in chunks of ``chunk``, as the run does them (any pixels: a
    forward's cost does not depend on them)."""
    device = bench_device(backbone)
    backbone(backbone.normalize(torch.rand(1, 3, *size, device=device)))  # warm-up
    start = time.perf_counter()
    for first in range(0, images, batch_size):
        backbone(backbone.normalize(torch.rand(min(batch_size, images - first), 3, *size, device=device)))
    middle = time.perf_counter()
    for count in crops:
        for part in range(0, count, chunk):
            crops_in = torch.rand(min(chunk, count - part), 3, crop_size, crop_size, device=device)
            _ = backbone(backbone.normalize(crops_in)).cls
    if device.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    return {"image_forwards": middle - start, "crop_forwards": end - middle, "total": end - start}
