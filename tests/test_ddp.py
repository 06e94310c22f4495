"""Discovery and labelling under Lightning DDP (2 CPU processes, gloo) equal a single-process run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from datus.discovery import SegmentStore
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _discover(out, cache, *args):
    proc = subprocess.run(
        [sys.executable, "discover.py", "backbone=tiny_vit", "dataset=demo", "resize.size=64", "logger=none",
         "batch_size=2", "k=4", "labeling.features=crop", "trainer.enable_progress_bar=false",
         f"hydra.run.dir={out}", f"paths.cache_dir={cache}", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_process_ddp_gives_the_single_process_outputs(tmp_path):
    _discover(tmp_path / "one", tmp_path / "cache1")
    _discover(tmp_path / "two", tmp_path / "cache2", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    shards = sorted(p.name for p in (tmp_path / "two" / "segments").glob("shard-*.npz"))
    assert [name[:10] for name in shards] == ["shard-000-", "shard-001-"]  # both ranks wrote their part
    crops = list((tmp_path / "cache2" / "discovery").glob("*/crop_features/*/shard-001-*.npz"))
    assert crops  # the crop-embedding pass ran on both ranks too
    one = {r.stem: r.decomposition for r in SegmentStore(tmp_path / "one" / "segments")}
    two = {r.stem: r.decomposition for r in SegmentStore(tmp_path / "two" / "segments")}
    assert sorted(one) == sorted(two) and len(one) == 5
    for stem, dec in one.items():
        for name in ("communities", "segments", "segment_valid", "segment_features"):
            assert np.array_equal(getattr(dec, name), getattr(two[stem], name)), (stem, name)
    masks = sorted((tmp_path / "one" / "pseudo_masks").glob("*.png"))
    assert len(masks) == 5
    for path in masks:  # clustered once, by rank 0: byte-identical masks
        assert path.read_bytes() == (tmp_path / "two" / "pseudo_masks" / path.name).read_bytes(), path.name
    assert (tmp_path / "one" / "labeling" / "assignments.npz").read_bytes() == (
        tmp_path / "two" / "labeling" / "assignments.npz").read_bytes()
