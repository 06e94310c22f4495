"""Multiruns: every experiment config, a K sweep through submitit, and the report over them."""

from __future__ import annotations

import csv
import json
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


def _multirun(sweep, *args, cache=None, env=None):
    cache = cache or sweep.parent / "cache"
    proc = subprocess.run(
        [sys.executable, "discover.py", "-m", "backbone=tiny_vit", "resize.size=64", "logger=csv",
         "num_pictures=1", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
         f"paths.cache_dir={cache}", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1500, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


#: Experiments whose models are files the user supplies: run on the tiny exports of the same signatures.
USER_FILES = ("camvid_clip_sam",)


def test_every_experiment_config_runs(tmp_path, mixed_root):
    sweep = tmp_path / "experiments"
    _multirun(sweep, f"experiment=glob(*,exclude=[{','.join(USER_FILES)}])", f"paths.data_dir={mixed_root}", "k=3")
    from tests.openvocab_models import build_all
    from tests.test_configs import _options

    files = build_all(tmp_path / "onnx")
    _multirun(sweep, f"experiment={','.join(USER_FILES)}", f"paths.data_dir={mixed_root}",
              *[f"method.{name}={path}" for name, path in files.items()], "method.sam.points_per_side=3",
              "method.sam.pred_iou_thresh=0.5", "method.sam.stability_thresh=0.5")
    jobs = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(jobs) == len(_options("experiment"))
    for job in jobs:
        assert (job / "summary.json").is_file(), job.name
    with_truth = [job for job in jobs if "camvid" in job.name or "suim" in job.name or "coco" in job.name]
    assert with_truth and all((job / "metrics.json").is_file() for job in with_truth)


def test_k_sweep_through_submitit_and_the_report(tmp_path, mixed_root):
    sweep = tmp_path / "sweep"
    _multirun(sweep, "hydra/launcher=local", "dataset=camvid", f"paths.data_dir={mixed_root}", "dataset.split=val",
              "k=2,4")
    assert len(list(sweep.glob("*/metrics.json"))) == 2
    assert list(sweep.glob(".submitit/*"))  # the jobs went through submitit
    proc = subprocess.run([sys.executable, "-m", "datus.report", str(sweep)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert sorted(int(r["k"]) for r in rows) == [2, 4] and {r["backbone"] for r in rows} == {"tiny_vit"}
    assert all(0 <= float(r["miou"]) <= 100 for r in rows)
    assert (sweep / "report.png").is_file() and "| tiny_vit |" in (sweep / "report.md").read_text().replace("|  ", "| ")


def _jobs(sweep):
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_wandb_offline_one_run_per_job_grouped_by_sweep(tmp_path, mixed_root):
    import os

    sweep = tmp_path / "wb_sweep"
    env = {**os.environ, "WANDB_MODE": "offline"}  # whatever the user's shell says (disabled would write nothing)
    _multirun(sweep, "logger=wandb", "dataset=camvid", f"paths.data_dir={mixed_root}", "dataset.split=val",
              "k=2,3", env=env)
    runs = []
    for job in _jobs(sweep):
        found = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(found) == 1, job.name  # wandb.finish() between jobs: one run each, in the job's dir
        runs.append(found[0])
        record = found[0].read_bytes()  # the offline run file that `wandb sync` uploads
        assert b"discover-wb_sweep" in record  # group: task + sweep
        for key in (b"pseudo_masks/miou", b"pseudo_masks/pixel_accuracy", b"discovery/valid_segments_per_image"):
            assert key in record, key
        assert list(found[0].parent.glob("files/media/images/*.png"))  # confusion matrix, samples, pictures
    assert len(runs) == 2 and runs[0].parent.name != runs[1].parent.name


def test_sharded_discovery_then_one_labelling_job(tmp_path, mixed_root):
    """What slurm/discover_array.sbatch does: N shard tasks of stage=segments, then stage=labels."""
    common = ["dataset=camvid", f"paths.data_dir={mixed_root}", "dataset.split=val", "k=3"]
    _multirun(tmp_path / "shards", "stage=segments", "shard.count=2", "shard.index=0,1", *common,
              cache=tmp_path / "cache")
    _multirun(tmp_path / "merge", "stage=labels", *common, cache=tmp_path / "cache")
    (job,) = _jobs(tmp_path / "merge")
    assert len(list((job / "pseudo_masks").glob("*.png"))) == 3 and (job / "metrics.json").is_file()
    entries = list((tmp_path / "cache" / "discovery").iterdir())
    assert len(entries) == 1 and len(list((entries[0] / "segments").glob("shard-*.npz"))) == 2


def test_refine_true_chains_the_refinement(tmp_path, mixed_root):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "discover.py", "backbone=tiny_vit", "resize.size=64", "logger=csv", "num_pictures=0",
         "dataset=camvid", f"paths.data_dir={mixed_root}", "dataset.split=train", "k=3",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={out}", f"paths.cache_dir={tmp_path / 'cache'}",
         "refine=true", "refine_overrides=['debug=fdr','predict=true','trainer.enable_progress_bar=false']"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "refine" / "train_summary.json").read_text())
    assert summary["k"] == 3 and summary["rounds"][0]["pseudo_masks"] == str(out / "pseudo_masks")
    assert len(list((out / "refine" / "refined" / "pseudo_masks").glob("*.png"))) == 3
