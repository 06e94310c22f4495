"""evaluate.py end to end: files, numbers and errors, on real CamVid and on a generated folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datus.data import CamVid, DemoImages
from tests.conftest import PROJECT_ROOT


def _evaluate(*args, expect_ok=True):
    proc = subprocess.run([sys.executable, "evaluate.py", "logger=none", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def folder_data(tmp_path):
    """A user's own data (dataset=folder): real photos, 3-class masks, 255 void."""
    root = tmp_path / "data"
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "true_masks").mkdir()
    for i, item in enumerate(DemoImages()):
        image = item["image"].permute(1, 2, 0).numpy()
        Image.fromarray(image).save(root / "val" / "images" / f"img{i}.png")
        truth = (image.mean(axis=2) // 86).astype(np.uint8)  # dark / mid / bright
        truth[:4] = 255
        Image.fromarray(truth).save(root / "val" / "true_masks" / f"img{i}.png")
    return root


def _write_masks(folder, truths, perm, k):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, truth in truths.items():
        pred = np.where(truth == 255, 0, perm[np.minimum(truth, len(perm) - 1)]).astype(np.uint8)
        Image.fromarray(pred).save(folder / f"{stem}.png")


def test_permuted_ground_truth_scores_100_and_writes_every_file(tmp_path, folder_data):
    import torch  # noqa: F401  (the dataset yields tensors)

    from datus.data import ImageFolder

    data = ImageFolder(folder_data, "val", num_classes=3)
    truths = {s.stem: data.read_mask(s) for s in data.samples}
    _write_masks(tmp_path / "masks", truths, np.array([2, 0, 1]), 3)
    out = tmp_path / "eval"
    proc = _evaluate("dataset=folder", f"dataset.root={folder_data}", "dataset.split=val",
                     "dataset.num_classes=3", f"masks={tmp_path / 'masks'}", f"hydra.run.dir={out}",
                     "protocol=paper")
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("miou", "pixel_accuracy", "mean_f1", "coverage", "per_class_iou", "matching", "protocol"):
        assert key in metrics
    assert metrics["miou"] == 1.0 and metrics["pixel_accuracy"] == 1.0 and metrics["coverage"] == 1.0
    assert metrics["matching"]["cluster_to_class"] == {"0": "class_1", "1": "class_2", "2": "class_0"}
    assert metrics["paper"]["miou"] == 1.0
    assert (out / "confusion_matrix.png").is_file() and (out / "samples.png").is_file()
    assert "mIoU" in proc.stdout and "class_0" in proc.stdout


def test_identity_matching_scores_names_as_given_and_the_same_masks_permuted_score_zero(tmp_path, folder_data):
    """matching=identity (open vocabulary): the ground truth itself scores 100, a permutation of it 0,
    where the Hungarian matching would have undone the permutation."""
    from datus.data import ImageFolder

    data = ImageFolder(folder_data, "val", num_classes=3)
    truths = {s.stem: data.read_mask(s) for s in data.samples}
    common = ["dataset=folder", f"dataset.root={folder_data}", "dataset.split=val", "dataset.num_classes=3",
              "matching=identity"]
    _write_masks(tmp_path / "same", truths, np.array([0, 1, 2]), 3)
    _evaluate(*common, f"masks={tmp_path / 'same'}", f"hydra.run.dir={tmp_path / 'e1'}")
    same = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert same["miou"] == 1.0 and same["matching"]["method"] == "identity"
    _write_masks(tmp_path / "permuted", truths, np.array([2, 0, 1]), 3)
    _evaluate(*common, f"masks={tmp_path / 'permuted'}", f"hydra.run.dir={tmp_path / 'e2'}")
    permuted = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert permuted["miou"] == 0.0 and permuted["pixel_accuracy"] == 0.0
    proc = _evaluate(*common[:-1], "matching=greedy", f"masks={tmp_path / 'same'}", expect_ok=False)
    assert proc.returncode == 1 and "matching='greedy': choose one of hungarian, identity" in proc.stderr


def test_missing_masks_are_named_unless_allowed(tmp_path, folder_data):
    from datus.data import ImageFolder

    data = ImageFolder(folder_data, "val", num_classes=3)
    truths = {s.stem: data.read_mask(s) for s in data.samples}
    del truths["img1"], truths["img3"]
    _write_masks(tmp_path / "masks", truths, np.array([0, 1, 2]), 3)
    common = ["dataset=folder", f"dataset.root={folder_data}", "dataset.split=val", "dataset.num_classes=3",
              f"masks={tmp_path / 'masks'}"]
    proc = _evaluate(*common, f"hydra.run.dir={tmp_path / 'e1'}", expect_ok=False)
    assert proc.returncode != 0 and "2 of 5 images have no mask" in proc.stderr and "img1" in proc.stderr
    _evaluate(*common, f"hydra.run.dir={tmp_path / 'e2'}", "allow_missing=true")
    metrics = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert metrics["missing_masks"] == ["img1", "img3"]
    assert metrics["coverage"] < 1.0 and metrics["pixel_accuracy"] == pytest.approx(metrics["coverage"])


def test_a_mask_of_the_wrong_size_is_an_error_not_a_resize(tmp_path, folder_data):
    from datus.data import ImageFolder

    data = ImageFolder(folder_data, "val", num_classes=3)
    truths = {s.stem: data.read_mask(s) for s in data.samples}
    _write_masks(tmp_path / "masks", truths, np.array([0, 1, 2]), 3)
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "masks" / "img2.png")
    proc = _evaluate("dataset=folder", f"dataset.root={folder_data}", "dataset.split=val",
                     "dataset.num_classes=3", f"masks={tmp_path / 'masks'}", f"hydra.run.dir={tmp_path / 'e'}",
                     expect_ok=False)
    assert proc.returncode != 0 and "img2.png is 10x10" in proc.stderr and "never resized" in proc.stderr


def test_masks_folder_that_does_not_exist_names_the_setting(tmp_path, folder_data):
    proc = _evaluate("dataset=folder", f"dataset.root={folder_data}", "dataset.split=val",
                     "dataset.num_classes=3", f"masks={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'e'}",
                     expect_ok=False)
    assert proc.returncode != 0 and "masks=" in proc.stderr and "no such folder" in proc.stderr


@pytest.mark.slow
def test_camvid_val_honest_numbers_are_lower_than_the_paper_protocol(tmp_path, camvid_root):
    """Real CamVid ground truth, degraded predictions: unlabelled pixels cost in the honest protocol."""
    data = CamVid(camvid_root, "val")
    rng = np.random.default_rng(0)
    masks = tmp_path / "masks"
    masks.mkdir()
    for sample in data.samples:
        truth = data.read_mask(sample)
        pred = np.where(truth == 255, 0, (truth + 3) % 11).astype(np.uint8)
        pred[rng.random(pred.shape) < 0.2] = 255  # a fifth unlabelled
        Image.fromarray(pred).save(masks / f"{sample.stem}.png")
    out = tmp_path / "eval"
    _evaluate("dataset=camvid", f"dataset.root={camvid_root}", "dataset.split=val", f"masks={masks}",
              "k=11", "protocol=paper", f"hydra.run.dir={out}")
    m = json.loads((out / "metrics.json").read_text())
    assert m["coverage"] == pytest.approx(0.8, abs=0.01)
    assert m["pixel_accuracy"] == pytest.approx(0.8, abs=0.01) and m["paper"]["pixel_accuracy"] == 1.0
    assert m["paper"]["miou"] == 1.0 and m["miou"] < 0.85
