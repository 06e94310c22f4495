"""Memory benchmark: peak RSS of discovery and labelling against the number of images.

Each measurement is a fresh process (``os.wait4`` gives that child's own peak), so the numbers
are what a user's job would see: ``load`` (libraries and the backbone only), ``segments``
(discovery into a fresh cache) and ``labels`` (k-means over every segment, pseudo masks,
evaluation). Streaming means the ``segments`` peak does not grow with the images and the
``labels`` peak grows only with the segments.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

STAGES = ("load", "segments", "labels")


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def run_child(images: int, stage: str, work: Path, overrides: list[str]) -> dict[str, Any]:
    """Run one stage on the first ``images`` images in a fresh process; its peak RSS and summary."""
    command = [sys.executable, "-m", "datus.bench", "memory-child", "--images", str(images), "--stage", stage,
               "--work", str(work), *overrides]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"memory-child {stage} on {images} images failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return result


def child(images: int, stage: str, work: Path, overrides: list[str]) -> dict[str, Any]:
    """The body of one measured process (prints one JSON line)."""
    import resource

    from datus.cli import seed_everything
    from datus.cli.compose import compose_config
    from datus.cli.discover import pipeline_kwargs
    from datus.pipeline import run_pipeline

    cfg = compose_config("discover", [*overrides, f"stage={'all' if stage == 'load' else stage}",
                                      f"cache_dir={work / 'cache'}", "logger=none", "num_pictures=0",
                                      "trainer.enable_progress_bar=false", f"paths.output_dir={work / 'out'}"])
    seed_everything(cfg.seed)  # as discover.py: a random-init backbone is the same in every run
    kwargs = pipeline_kwargs(cfg, work / "out")
    kwargs["dataset"].samples = kwargs["dataset"].samples[:images]  # the first N images of the split
    summary: dict[str, Any] = {}
    if stage != "load":
        summary = run_pipeline(**kwargs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": len(kwargs["dataset"]), "stage": stage, "peak_rss_mb": peak,
            "segments": summary.get("segments"), "valid_segments": summary.get("valid_segments"),
            "segments_clustered": summary.get("labeling", {}).get("segments_clustered"),
            "patches_per_image": _patches_per_image(work / "cache"),
            "cache_mb": _folder_mb(work / "cache" / "discovery"), "outputs_mb": _folder_mb(work / "out")}


def _patches_per_image(cache: Path) -> float | None:
    import numpy as np

    shards = sorted(cache.glob("discovery/*/segments/shard-*.npz"))
    if not shards:
        return None
    with np.load(shards[0], allow_pickle=False) as z:
        return float(np.prod(z["grid"], axis=1).mean())


def bench_memory(sizes: list[int], overrides: list[str], keep: Path | None = None) -> dict[str, Any]:
    """Every stage at every size (fresh cache per size); peaks, disk and the growth ratios."""
    rows = []
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"datus_mem_{n}_", dir=keep))
        try:
            for stage in STAGES:
                rows.append(run_child(n, stage, work, overrides))
        finally:
            if keep is None:
                shutil.rmtree(work, ignore_errors=True)
    by = {(r["images"], r["stage"]): r for r in rows}
    small, large = min(r["images"] for r in rows), max(r["images"] for r in rows)
    ratios = {stage: by[(large, stage)]["peak_rss_mb"] / by[(small, stage)]["peak_rss_mb"] for stage in STAGES}
    growth = {stage: (by[(large, stage)]["peak_rss_mb"] - by[(small, stage)]["peak_rss_mb"]) / (large - small)
              for stage in STAGES}
    return {"overrides": overrides, "rows": rows, "peak_rss_ratio": ratios, "mb_per_extra_image": growth,
            "images": [small, large]}


def format_memory(result: dict[str, Any]) -> str:
    lines = [f"{'images':>7}{'stage':>10}{'peak RSS MB':>13}{'segments':>10}{'cache MB':>10}{'outputs MB':>12}"]
    for r in result["rows"]:
        lines.append(f"{r['images']:>7}{r['stage']:>10}{r['peak_rss_mb']:>13.0f}{r['segments'] or '':>10}"
                     f"{r['cache_mb']:>10.1f}{r['outputs_mb']:>12.1f}")
    small, large = result["images"]
    for stage, ratio in result["peak_rss_ratio"].items():
        lines.append(f"peak RSS {large} vs {small} images, {stage:>8}: x{ratio:.3f} "
                     f"({result['mb_per_extra_image'][stage] * 1024:+.0f} KiB per extra image)")
    return "\n".join(lines)
