"""``python -m datus.cache``: list the cache, prune what no run has used for some days."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from datus.cache import entries, prune
from tests.conftest import PROJECT_ROOT, run_discover

COMMON = ["backbone=tiny_vit", "dataset=demo", "resize.size=64"]


def _masks(out):
    """The run's pseudo masks, file by file (the demo photos have no labels to score)."""
    return {p.name: p.read_bytes() for p in sorted((out / "pseudo_masks").iterdir())}


def _age(entry, days):
    """As if no run had asked for ``entry`` for ``days`` days (its files as old, its stamp too)."""
    then = time.time() - days * 86400
    for root, folders, files in os.walk(entry.path):
        for name in [*files, *folders]:
            os.utime(os.path.join(root, name), (then, then), follow_symlinks=False)
    os.utime(entry.path, (then, then))


def test_prune_removes_what_no_run_used_and_a_rerun_recomputes_it_identically(tmp_path):
    cache = tmp_path / "cache"
    run_discover(tmp_path / "graph", [*COMMON, f"paths.cache_dir={cache}"])
    graph = _masks(tmp_path / "graph")
    kept = {e.path for e in entries(cache)}
    assert kept and all((path / ".last_used").is_file() for path in kept)  # every entry a run was handed
    run_discover(tmp_path / "patches", [*COMMON, "method=kmeans_patches", f"paths.cache_dir={cache}"])
    old = [e for e in entries(cache) if e.path not in kept]
    assert old, "k-means on patches keeps its own patch features"
    for entry in old:
        _age(entry, 10)
    patches = _masks(tmp_path / "patches")

    removed, busy = prune(cache, unused_days=5, dry_run=True)
    assert {e.path for e in removed} == {e.path for e in old} and not busy
    assert all(e.path.is_dir() for e in old)  # a dry run removes nothing
    removed, busy = prune(cache, unused_days=5)
    assert {e.path for e in removed} == {e.path for e in old} and not busy
    assert {e.path for e in entries(cache)} == kept and not any(e.path.exists() for e in old)
    assert not list(cache.glob("*/.removing-*"))
    leftover = cache / old[0].kind / f".removing-{old[0].path.name}-1"  # a prune killed while removing
    leftover.mkdir()
    (leftover / "shard.npy").write_bytes(b"x")
    assert leftover not in {e.path for e in entries(cache)}
    assert prune(cache, unused_days=5) == ([], []) and not leftover.exists()

    # the kept run still reads its cache; the pruned one computes its entries again, to the same masks
    run_discover(tmp_path / "graph2", [*COMMON, f"paths.cache_dir={cache}"])
    assert _masks(tmp_path / "graph2") == graph and {e.path for e in entries(cache)} == kept | set()
    run_discover(tmp_path / "patches2", [*COMMON, "method=kmeans_patches", f"paths.cache_dir={cache}"])
    assert {e.path for e in entries(cache)} == kept | {e.path for e in old}
    assert _masks(tmp_path / "patches2") == patches and len(patches) > 1


HOLD = r"""
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1]); lock.acquire()
print("held", flush=True); time.sleep(60)
"""


def test_prune_leaves_an_entry_a_running_job_holds_and_refuses_bad_input(tmp_path):
    cache = tmp_path / "cache"
    run_discover(tmp_path / "graph", [*COMMON, f"paths.cache_dir={cache}"])
    run_discover(tmp_path / "patches", [*COMMON, "method=kmeans_patches", f"paths.cache_dir={cache}"])
    every = entries(cache)
    assert sorted(e.kind for e in every) == ["discovery", "features"]  # segments; k-means' patch tokens
    for entry in every:
        _age(entry, 3)
    segments, patches = (next(e for e in every if e.kind == kind) for kind in ("discovery", "features"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(segments.path / ".lock-0-of-1-rank0")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # a job computing segments into the entry
        removed, busy = prune(cache, unused_days=1, kinds=["discovery"])
        assert removed == [] and [e.path for e in busy] == [segments.path] and segments.path.is_dir()
        assert patches.path.is_dir()  # --kind leaves the other kinds alone
    finally:
        holder.kill()
        holder.wait()
    removed, busy = prune(cache, unused_days=1)
    assert sorted(e.kind for e in removed) == ["discovery", "features"] and not busy and entries(cache) == []
    with pytest.raises(ValueError, match="--kind nope: no such kind"):
        prune(cache, unused_days=1, kinds=["nope"])
    for days in (-1, float("nan")):  # NaN: no age reaches it, a prune that would silently remove nothing
        with pytest.raises(ValueError, match=f"--unused-days {days}"):
            prune(cache, unused_days=days)
    cli = [sys.executable, "-m", "datus.cache", "--cache-dir"]
    listing = subprocess.run([*cli, str(cache), "list", "--entries"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert listing.returncode == 0 and "| all | 0 | 0 B |" in listing.stdout
    missing = subprocess.run([*cli, str(tmp_path / "nope"), "list"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert missing.returncode != 0 and "no such folder" in missing.stderr
