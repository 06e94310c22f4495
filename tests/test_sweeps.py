"""Multiruns: every experiment config, a K sweep through submitit, and the report over them."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datus.data import DemoImages
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    """A data dir (paths.data_dir) of small CamVid, SUIM and COCO-Stuff splits in their real layouts."""
    data_dir = tmp_path_factory.mktemp("datasets")
    photos = [item["image"].permute(1, 2, 0).numpy()[::4, ::4] for item in list(DemoImages())[:3]]
    for i, image in enumerate(photos):
        image = np.ascontiguousarray(image)
        root = data_dir / "camvid"
        grey = image.mean(axis=2)
        for split in ("train", "val"):  # CamVid: 11 classes + void 11
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / f"{split}annot").mkdir(exist_ok=True)
            Image.fromarray(image).save(root / split / f"cam{i}.png")
            Image.fromarray((grey // 24).clip(0, 11).astype(np.uint8)).save(root / f"{split}annot" / f"cam{i}.png")
        root = data_dir / "suim"
        (root / "TEST" / "images").mkdir(parents=True, exist_ok=True)  # SUIM: colour-coded BMP masks
        (root / "TEST" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "TEST" / "images" / f"suim{i}.jpg")
        Image.fromarray(((image > 128) * 255).astype(np.uint8)).save(root / "TEST" / "masks" / f"suim{i}.bmp")
        root = data_dir / "cocostuff"
        (root / "images" / "val2017").mkdir(parents=True, exist_ok=True)  # COCO-Stuff stuffthingmaps
        (root / "annotations" / "val2017").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / "val2017" / f"{i:012d}.jpg")
        labels = np.where(grey > 128, 156, np.where(grey > 64, 148, 0)).astype(np.uint8)  # sky, road, person
        Image.fromarray(labels).save(root / "annotations" / "val2017" / f"{i:012d}.png")
    return data_dir


def _multirun(sweep, *args):
    proc = subprocess.run(
        [sys.executable, "discover.py", "-m", "backbone=tiny_vit", "resize.size=64", "logger=csv",
         "num_pictures=1", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_every_experiment_config_runs(tmp_path, mixed_root):
    sweep = tmp_path / "experiments"
    _multirun(sweep, "experiment=glob(*)", f"paths.data_dir={mixed_root}", "labeling.k=3")
    from tests.test_configs import _options

    jobs = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(jobs) == len(_options("experiment"))
    for job in jobs:
        assert (job / "summary.json").is_file(), job.name
    with_truth = [job for job in jobs if "camvid" in job.name or "suim" in job.name or "coco" in job.name]
    assert with_truth and all((job / "metrics.json").is_file() for job in with_truth)


def test_k_sweep_through_submitit_and_the_report(tmp_path, mixed_root):
    sweep = tmp_path / "sweep"
    _multirun(sweep, "hydra/launcher=local", "dataset=camvid", f"paths.data_dir={mixed_root}", "dataset.split=val",
              "labeling.k=2,4")
    assert len(list(sweep.glob("*/metrics.json"))) == 2
    assert list(sweep.glob(".submitit/*"))  # the jobs went through submitit
    proc = subprocess.run([sys.executable, "-m", "datus.report", str(sweep)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert sorted(int(r["k"]) for r in rows) == [2, 4] and {r["backbone"] for r in rows} == {"tiny_vit"}
    assert all(0 <= float(r["miou"]) <= 100 for r in rows)
    assert (sweep / "report.png").is_file() and "| tiny_vit |" in (sweep / "report.md").read_text().replace("|  ", "| ")
