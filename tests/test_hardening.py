"""Hardening III: the same command gives the same result, one run per folder, no misread masks, one-line errors."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tests.conftest import compose_config
from tests.test_heads import _overrides
from tests.test_heads import photos as photos  # noqa: F401 - the module's fixture, shared


def _train(photos, out, cache, *extra):
    from datus.cli.train import refine_from_config

    cfg = compose_config("train", [*_overrides(photos, out, "linear_head", *extra), f"cache_dir={cache}"], out)
    return refine_from_config(cfg, loggers=[])


def _weights(out) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _refined(out) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((out / "refined" / "pseudo_masks").glob("*.png"))}


def test_training_gives_the_same_result_whether_the_feature_cache_existed_or_not(photos, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    extra = ("trainer.max_epochs=2", "predict=true", "postprocess=none")
    _train(photos, tmp_path / "cold", cache, *extra)  # fills the cache
    _train(photos, tmp_path / "warm", cache, *extra)  # reads it
    cold, warm = _weights(tmp_path / "cold"), _weights(tmp_path / "warm")
    assert cold.keys() == warm.keys() and all(torch.equal(cold[k], warm[k]) for k in cold)
    assert _refined(tmp_path / "cold").keys() == _refined(tmp_path / "warm").keys()
    assert all(np.array_equal(a, _refined(tmp_path / "warm")[s]) for s, a in _refined(tmp_path / "cold").items())
