"""Every config of every group composes and instantiates; entry points run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datus.backbones import Backbone, list_backbones
from datus.data import SegmentationDataset
from tests.conftest import CONF_DIR, PROJECT_ROOT, compose_config


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_paths_defaults_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("DATUS_DATA", raising=False)
    monkeypatch.delenv("DATUS_CACHE", raising=False)
    cfg = compose_config("discover", [], tmp_path)
    assert cfg.paths.data_dir == "data"
    assert cfg.paths.cache_dir == "~/.cache/datus"
    monkeypatch.setenv("DATUS_DATA", "/datasets")
    monkeypatch.setenv("DATUS_CACHE", "/scratch/cache")
    cfg = compose_config("discover", [], tmp_path)
    assert cfg.paths.data_dir == "/datasets" and cfg.paths.cache_dir == "/scratch/cache"


@pytest.mark.parametrize("name", _options("backbone"))
def test_backbone_configs_instantiate_with_random_weights(name, tmp_path):
    cfg = compose_config("discover", [f"backbone={name}", "backbone.weights=random"], tmp_path)
    backbone = instantiate(cfg.backbone)
    assert isinstance(backbone, Backbone) and backbone.name == name
    assert cfg.resize.patch_size == backbone.patch_size  # the resize follows the backbone
    assert name in list_backbones()


@pytest.mark.parametrize("name", _options("dataset"))
def test_dataset_configs_compose_and_point_at_the_data_dir(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DATUS_DATA", "/datasets")
    cfg = compose_config("discover", [f"dataset={name}"], tmp_path)
    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    assert node["_target_"].startswith("datus.data.")
    if "root" in node:
        assert node["root"].startswith("/datasets/")


def test_demo_dataset_config_instantiates_offline(tmp_path):
    cfg = compose_config("discover", ["dataset=demo"], tmp_path)
    data = instantiate(cfg.dataset)
    assert isinstance(data, SegmentationDataset) and len(data) >= 5


def test_camvid_config_instantiates_on_the_real_copy(tmp_path, camvid_root):
    cfg = compose_config("discover", ["dataset=camvid", f"dataset.root={camvid_root}", "dataset.split=val"], tmp_path)
    data = instantiate(cfg.dataset)
    assert len(data) == 101 and data.num_classes == 11


@pytest.mark.parametrize("name", _options("trainer"))
def test_trainer_configs_compose(name, tmp_path):
    cfg = compose_config("discover", [f"trainer={name}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if name == "cpu":
        trainer = instantiate(cfg.trainer)
        assert trainer.num_devices == 1


@pytest.mark.parametrize("name", _options("logger"))
def test_logger_configs_instantiate(name, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from datus.cli import instantiate_loggers

    cfg = compose_config("discover", [f"logger={name}"], tmp_path)
    loggers = instantiate_loggers(cfg.logger)
    assert len(loggers) == (0 if name == "none" else 1)


@pytest.mark.parametrize("name", _options("experiment"))
def test_experiment_configs_compose(name, tmp_path):
    cfg = compose_config("discover", [f"experiment={name}"], tmp_path)
    assert cfg.backbone.name in list_backbones()


def test_invalid_resize_fails_before_any_work(tmp_path):
    cfg = compose_config("discover", ["resize.mode=square", "resize.size=225"], tmp_path)
    with pytest.raises(Exception, match="not a multiple of the patch size 14"):
        instantiate(cfg.resize)


def test_discover_runs_end_to_end_on_demo_images_with_a_tiny_backbone(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "discover.py", "backbone=tiny_vit", "resize.size=64", "logger=none",
         f"hydra.run.dir={out}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 5 and summary["backbone"] == "tiny_vit"
    pictures = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert len(pictures) == 5 and "chelsea.png" in pictures
    assert summary["valid_segments"] >= 5
    assert not list(out.rglob("*.tmp"))
    # where the time went: each stage's wall seconds, the discovery inside the backbone passes
    assert set(summary["seconds"]) == {"prepare", "backbone_passes", "labels"}  # the demo has no masks to evaluate
    assert 0 < summary["seconds_this_run"] <= summary["seconds"]["backbone_passes"]


@pytest.mark.slow
def test_discover_default_command_runs_offline_with_the_packaged_dinov2(tmp_path, cache_dir):
    """The README's first command: no arguments, packaged weights, demo photos."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "discover.py", f"hydra.run.dir={out}", f"paths.cache_dir={cache_dir}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] == "dinov2_vits14" and summary["weights"] == "packaged"
    assert summary["images"] == 5 and summary["skipped"] == []
    # real features decompose real photos into several valid segments each
    assert summary["per_image"]["valid_segments"] >= 3
    assert len(list((out / "pictures").glob("*.png"))) == 5
    assert "pictures: " in proc.stderr + proc.stdout
    # a quiet first run: no library noise (faiss's loader, Lightning's own deprecation, faiss's k-means
    # warning on a tiny split: said once in our log instead), only our lines and the progress bar
    output = proc.stderr + proc.stdout
    for noise in ("swigfaiss", "LeafSpec", "WARNING clustering", "TPU available", "Could not load library"):
        assert noise not in output, noise
    assert "the clusters rest on few points" in (out / "discover.log").read_text()
    # the pictures end with the product's output: photo | communities | valid segments | pseudo mask
    from PIL import Image

    width, height = Image.open(out / "pictures" / "chelsea.png").size
    assert width > 4.2 * height  # four panels of a 451x300 photo side by side (three gave 3.7)


@pytest.mark.parametrize("what", ["attention", "features"])
def test_viz_saves_pictures_of_what_the_backbone_sees(tmp_path, what):
    proc = subprocess.run(
        [sys.executable, "-m", "datus.viz", what, "--images", "2", "--out", str(tmp_path), "backbone=tiny_vit",
         "resize.size=64"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    pictures = sorted((tmp_path / what).glob("*.png"))
    assert [p.stem for p in pictures] == ["astronaut", "chelsea"]
    from PIL import Image

    assert Image.open(pictures[0]).size[0] > 300  # a real figure, not an empty file


def test_the_cache_key_names_the_data_not_the_spelling_of_its_path(tmp_path, monkeypatch):
    """``dataset.root`` relative, absolute or through a link: one cache entry; one relative name
    used from two folders (two different datasets): two entries."""
    from PIL import Image

    from datus.cli.discover import pipeline_kwargs
    from datus.runs import settings_key

    for project in ("a", "b"):
        folder = tmp_path / project / "photos" / "train" / "images"
        folder.mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / "one.png")
    (tmp_path / "link").symlink_to(tmp_path / "a" / "photos")

    def key(cwd, root):
        monkeypatch.chdir(cwd)
        cfg = compose_config("discover", ["backbone=tiny_vit", "dataset=folder", f"dataset.root={root}",
                                          "logger=none"], tmp_path / "out")
        kwargs = pipeline_kwargs(cfg, tmp_path / "out")
        assert kwargs["run_dir"].settings["dataset"]["root"] == kwargs["settings"]["dataset"]["root"]
        return settings_key(kwargs["settings"])

    relative = key(tmp_path / "a", "photos")
    assert key(tmp_path, tmp_path / "a" / "photos") == relative
    assert key(tmp_path, "link") == relative
    assert key(tmp_path / "b", "photos") != relative
