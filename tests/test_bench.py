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
