"""Fault injection: discovery and labelling killed (SIGKILL, SIGTERM) at several points, then rerun.

The rerun must finish the job with outputs byte-identical to an uninterrupted run, and no
temporary or partial file may be left. Real photos, the real (packaged) DINOv2, in subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datus.data import DemoImages
from datus.discovery import SegmentStore
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

#: Final outputs that must not depend on whether the run was interrupted.
OUTPUTS = ("pseudo_masks", "pseudo_masks_color", "labeling/assignments.npz", "labeling/centroids.npz")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """10 real photos (the demo set and its mirror images) as a folder dataset."""
    root = tmp_path_factory.mktemp("photos")
    folder = root / "train" / "images"
    folder.mkdir(parents=True)
    for item in DemoImages():
        image = np.ascontiguousarray(item["image"].permute(1, 2, 0).numpy()[::2, ::2])
        Image.fromarray(image).save(folder / f"{item['stem']}.png")
        Image.fromarray(np.ascontiguousarray(image[:, ::-1])).save(folder / f"{item['stem']}_mirror.jpg", quality=95)
    return root


def _command(photos: Path, out: Path, weights_cache: Path) -> list[str]:
    return [sys.executable, "discover.py", "backbone=dinov2_vits14", "backbone.weights=packaged",
            f"paths.cache_dir={weights_cache}", "cache_dir=null", "dataset=folder", f"dataset.root={photos}",
            "resize.size=224", "batch_size=1", "shard_size=1", "k=4", "labeling.features=crop",
            "labeling.crop_size=112", "logger=none", "num_pictures=0", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}"]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]


def _files(folder: Path) -> dict[str, bytes]:
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _segments(out: Path) -> dict[str, tuple]:
    return {r.stem: (r.decomposition.segments.tobytes(), r.decomposition.segment_features.tobytes(),
                     r.decomposition.segment_valid.tobytes()) for r in SegmentStore(out / "segments")}


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def clean(photos, weights_cache, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("clean")
    _run(_command(photos, out, weights_cache))
    return out


#: Where to strike: once this many files exist in this folder (relative to the output dir).
POINTS = {
    "discovery": ("segments", "shard-*.npz", 3),
    "segment_crops": ("crop_features", "*/shard-*.npz", 2),
    "pseudo_masks": ("pseudo_masks", "*.png", 1),
}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("point", list(POINTS))
def test_killed_run_resumes_to_identical_outputs(photos, weights_cache, clean, tmp_path, sig, point):
    out = tmp_path / "run"
    command = _command(photos, out, weights_cache)
    folder, pattern, count = POINTS[point]
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and len(list((out / folder).glob(pattern))) < count:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip(f"the run finished before reaching {point}")
    os.kill(proc.pid, sig)
    output, _ = proc.communicate(timeout=300)
    if sig == signal.SIGTERM:  # graceful: a clear message, status 143, nothing half-written
        assert proc.returncode == 143, output[-3000:]
        assert "SIGTERM received" in output and "rerun the same command to resume" in output
        assert _temporaries(out) == []
    else:
        assert proc.returncode == -signal.SIGKILL

    _run(command)  # the same command again finishes the job
    assert _temporaries(out) == []
    assert _segments(out) == _segments(clean)
    for name in OUTPUTS:
        assert _files(out / name) == _files(clean / name), name


def test_same_config_and_seed_give_identical_outputs(photos, weights_cache, clean, tmp_path):
    """Determinism: a second, independent run (new process, no cache) reproduces every output byte."""
    _run(_command(photos, tmp_path / "again", weights_cache))
    assert _segments(tmp_path / "again") == _segments(clean)
    for name in OUTPUTS:
        assert _files(tmp_path / "again" / name) == _files(clean / name), name
