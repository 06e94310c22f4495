"""The benchmarks run (the numbers themselves are measured on real data, see experiments/)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_memory_benchmark_measures_every_stage_at_each_size(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, "-m", "datus.bench", "memory", "--images", "2,5", "--out", str(out),
         "backbone=tiny_vit", "resize.size=64", "k=3"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["images"], r["stage"]): r for r in result["rows"]}
    assert sorted(rows) == sorted((n, s) for n in (2, 5) for s in ("load", "segments", "labels"))
    assert rows[(5, "segments")]["segments"] > rows[(2, "segments")]["segments"] > 0
    assert rows[(5, "labels")]["segments_clustered"] > 0 and rows[(5, "segments")]["cache_mb"] > 0
    for (n, _stage), row in rows.items():  # each stage's own process: at least what loading costs
        assert row["peak_rss_mb"] >= 0.9 * rows[(n, "load")]["peak_rss_mb"]
    assert set(result["peak_rss_ratio"]) == {"load", "segments", "labels"}
    assert "peak RSS 5 vs 2 images" in proc.stdout


def test_authors_graph_and_regions_equal_ours_on_real_features():
    """The benchmark's re-implementation of the authors' loop builds the same graph and regions as
    datus (so timing it against datus compares equal work)."""
    import numpy as np
    import torch

    from datus.backbones import build_backbone
    from datus.bench.paper import _authors_adjacency, _authors_regions
    from datus.data import DemoImages
    from datus.discovery import Affinity, Louvain, connected_regions
    from datus.transforms import ResizeForBackbone

    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit")
    image = DemoImages(transform=ResizeForBackbone(96, 8, mode="square"))[1]["image"]
    out = backbone(backbone.normalize(image[None]))
    affinity = Affinity(kind="binary", debias="center", knn=None)
    keys = affinity.prepare(out.keys[0]).numpy()
    ours = affinity(out.keys[0]).numpy()
    assert 0.1 < ours.mean() < 0.9
    np.testing.assert_array_equal(_authors_adjacency(keys), ours)

    communities = Louvain("igraph", resolution=1.0)(ours).reshape(out.grid)
    regions, _ = connected_regions(communities, 8)
    theirs = {frozenset(region) for region in _authors_regions(communities)}
    assert theirs == {frozenset(zip(*np.nonzero(regions == r))) for r in range(regions.max() + 1)}


def test_speed_benchmark_prints_every_ratio_with_its_target(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, "-m", "datus.bench", "speed", "--images", "2", "--authors-images", "1",
         "--reference-images", "1", "--out", str(out), "backbone=tiny_vit", "k=3"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    ratios = result["ratios"]
    assert set(ratios) == {"default_throughput_ratio", "paper_graph_ms", "paper_modularity_vs_python_louvain",
                           "paper_run_over_forwards", "paper_speedup_over_authors"}
    assert all(value > 0 for value in ratios.values())
    run = result["paper_run"]
    assert run["images"] == 5 and run["crops"] > 0  # the demo split, its valid segments' crops
    assert sum(run["stages"].values()) == pytest.approx(run["seconds"], rel=1e-6)
    assert run["seconds"] > result["paper_forwards"]["total"] > 0
    for name in ("default discovery", "paper graphs", "paper run", "authors' per-image loop", "target"):
        assert name in proc.stdout
    assert "[1/4]" in proc.stderr and "[4/4] the authors' per-image loop" in proc.stderr  # says what it measures
