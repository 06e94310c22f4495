"""Discovery benchmark: backbone-only vs whole-stage throughput, graph and Louvain cost per backend."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from datus.discovery import Louvain, list_community_backends, modularity, run_discovery
from datus.shards import collate_items


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _backbone_pass(backbone, dataset, batch_size: int, num_workers: int, keep: str | None = None):
    """Forward every image through the backbone only; optionally keep one feature per image."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_items)
    kept: list[tuple[torch.Tensor, tuple[int, int]]] = []
    device = bench_device(backbone)
    start = time.perf_counter()
    for batch in loader:
        groups: dict[tuple, list] = {}
        for item in batch["items"]:
            groups.setdefault(tuple(item["image"].shape), []).append(item["image"])
        for images in groups.values():
            out = backbone(backbone.normalize(torch.stack(images).to(device)))
            if keep:
                kept.extend((f.clone(), out.grid) for f in out.features(keep))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, kept


def discovery_objects(overrides: list[str]):
    """``(cfg, decomposer, dataset)`` that ``conf/discover.yaml`` with ``overrides`` names (the dataset
    resized for the backbone); the backbone is built by the caller, once for several settings."""
    from hydra.utils import instantiate

    from datus.cli.compose import compose_config

    cfg = compose_config("discover", overrides)
    return cfg, instantiate(cfg.graph), instantiate(cfg.dataset, transform=instantiate(cfg.resize))


def bench_device(backbone) -> torch.device:
    """Put ``backbone`` on the GPU when there is one (as discovery's Lightning trainer does) and return
    its device: every timed forward runs where a user's would."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone.to(device)
    return device


def bench_discovery(
    backbone,
    decomposer,
    dataset,
    images: int = 50,
    batch_size: int = 8,
    num_workers: int = 0,
    reference_images: int = 10,
) -> dict[str, Any]:
    """Measure on the first ``images`` images of ``dataset``; returns a dict of numbers."""
    subset = Subset(dataset, range(min(images, len(dataset))))
    n = len(subset)
    _backbone_pass(backbone, Subset(dataset, [0]), 1, 0)  # warm-up
    backbone_s1, graph_feats = _backbone_pass(backbone, subset, batch_size, num_workers, keep=decomposer.feature)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(accelerator="auto", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        start = time.perf_counter()
        summary = run_discovery(backbone, decomposer=decomposer, dataset=subset, trainer=trainer, out_dir=Path(tmp),
                                settings={"bench": 1}, batch_size=batch_size, num_workers=num_workers,
                                shard_size=256, num_pictures=0)
        discovery_s = time.perf_counter() - start
    backbone_s2, _ = _backbone_pass(backbone, subset, batch_size, num_workers)
    backbone_s = (backbone_s1 + backbone_s2) / 2

    key_bias = backbone.key_bias() if decomposer.needs_key_bias else None
    graphs, graph_ms = [], []
    for feats, _ in graph_feats:
        t = time.perf_counter()
        graphs.append(decomposer.graph(feats, key_bias))
        graph_ms.append(1e3 * (time.perf_counter() - t))
    backends: dict[str, dict[str, float]] = {}
    per_graph: dict[str, list[float]] = {}
    resolution, seed = decomposer.louvain.resolution, decomposer.louvain.seed
    for name in list_community_backends():
        louvain = Louvain(name, resolution, seed)
        count = len(graphs) if name != "python-louvain" else min(reference_images, len(graphs))
        times, qs, communities = [], [], []
        for graph in graphs[:count]:
            t = time.perf_counter()
            labels = louvain(graph)
            times.append(1e3 * (time.perf_counter() - t))
            qs.append(modularity(graph, labels, resolution))  # the objective Louvain maximised
            communities.append(labels.max() + 1)
        per_graph[name] = qs
        backends[name] = {"images": count, "louvain_ms": float(np.mean(times)),
                          "modularity": float(np.mean(qs)), "communities": float(np.mean(communities))}
    reference = per_graph["python-louvain"]
    for name, row in backends.items():  # on the images the reference ran on
        row["modularity_vs_reference"] = float(np.mean(per_graph[name][: len(reference)]) / np.mean(reference))

    return {
        "images": n,
        "grid": list(graph_feats[0][1]) if graph_feats else None,
        "backbone_images_per_s": n / backbone_s,
        "discovery_images_per_s": n / discovery_s,
        "throughput_ratio": backbone_s / discovery_s,
        "graph_construction_ms": float(np.mean(graph_ms)),
        "default_backend": decomposer.louvain.backend,
        "backends": backends,
        "valid_segments_per_image": summary["per_image"]["valid_segments"],
        "peak_rss_mb": peak_rss_mb(),
    }


def format_report(result: dict[str, Any]) -> str:
    """A readable table of :func:`bench_discovery`'s numbers."""
    lines = [
        f"images: {result['images']}  patch grid: {result['grid']}",
        f"backbone only : {result['backbone_images_per_s']:.3f} images/s",
        f"discovery     : {result['discovery_images_per_s']:.3f} images/s  "
        f"(ratio {result['throughput_ratio']:.3f}; target >= 0.97)",
        f"graph construction: {result['graph_construction_ms']:.1f} ms/image",
        f"{'backend':<16}{'images':>8}{'louvain ms':>12}{'modularity':>12}{'vs ref':>9}{'communities':>13}",
    ]
    for name, row in result["backends"].items():
        mark = " (default)" if name == result["default_backend"] else ""
        lines.append(f"{name:<16}{row['images']:>8}{row['louvain_ms']:>12.1f}{row['modularity']:>12.4f}"
                     f"{row['modularity_vs_reference']:>9.3f}{row['communities']:>13.1f}{mark}")
    lines.append(f"peak RSS: {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
