"""The feature head (``feature_head=stego``): its loss, training, cache, resume, configs and bad input, on real photos."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from datus.backbones import ProjectedBackbone, ProjectionHead, build_backbone, list_backbones
from datus.data import DemoImages
from datus.features import FeatureCache, FeatureSpec
from datus.projection import (
    CorrelationLoss,
    HeadFileError,
    PairedPatches,
    Projection,
    ProjectionModule,
    check_codes,
    load_head,
    nearest_images,
    save_head,
    split_mean,
)
from datus.transforms import ResizeForBackbone
from tests.conftest import compose_config

SETTINGS = {"name": "tiny_vit", "weights": "random"}


def _trainer():
    import pytorch_lightning as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)


def _demo(size: int = 64) -> DemoImages:
    return DemoImages(transform=ResizeForBackbone(size, 8))


def _tiny():
    torch.manual_seed(0)
    return build_backbone("tiny_vit", weights="random")


def _attach(projection: Projection, root, backbone=None, dataset=None) -> ProjectedBackbone:
    dataset = dataset or _demo()
    return projection.attach(backbone or _tiny(), dataset, backbone_settings=SETTINGS, resize=dataset.transform,
                             cache=FeatureCache(root, root, _trainer))


def _losses(backbone, steps: int, size: int, folder) -> list[float]:
    """Loss per step of a head trained on ``backbone``'s keys of the demo photos (real images)."""
    import pytorch_lightning as pl

    dataset = _demo(size)
    index = FeatureCache(None, folder, _trainer).index(dataset, backbone=lambda: backbone, backbone_settings={},
                                                       resize=dataset.transform, spec=FeatureSpec())
    indices = sorted(index.entries)
    center, pooled = split_mean(index, indices)
    pl.seed_everything(0, verbose=False)
    head = ProjectionHead(in_dim=center.numel(), out_dim=16)
    head.center.copy_(center)
    module = ProjectionModule(head, CorrelationLoss(), lr=2e-3)
    optimizer = module.configure_optimizers()
    data = PairedPatches(index, indices, nearest_images(pooled, center, 2), samples=11)
    losses = []
    for _ in range(steps):
        batch = torch.utils.data.default_collate([data[j] for j in range(len(data))])
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():  # the codes of one image's patches must not collapse onto one direction
        codes = torch.nn.functional.normalize(head(torch.from_numpy(index[indices[0]].astype("float32")).flatten(1).T),
                                              dim=1)
    assert (codes @ codes.T).mean() < 0.8, "the codes collapsed: every patch has the same code"
    return losses


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_the_loss_decreases_on_real_photos_with_the_tiny_backbone(tmp_path):
    losses = _losses(_tiny(), steps=60, size=64, folder=tmp_path)
    assert _mean(losses[-10:]) < _mean(losses[:10]) - 0.01, (losses[:10], losses[-10:])


@pytest.mark.slow
def test_the_loss_decreases_on_real_photos_with_the_packaged_dinov2(packaged_dinov2, tmp_path):
    losses = _losses(packaged_dinov2, steps=40, size=112, folder=tmp_path)
    assert _mean(losses[-10:]) < _mean(losses[:10]) - 0.01, (losses[:10], losses[-10:])


def test_correlations_that_exceed_the_shift_attract_and_the_rest_repel():
    """One pairing by hand: codes aligned with features whose correlation is above the shift lower the loss."""
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(1, 6, 8), dim=-1)
    same = CorrelationLoss(self_weight=1, knn_weight=0, random_weight=0, self_shift=0.0, pointwise=False)
    aligned = same(feats, feats, feats, feats)["loss"]  # codes = features: correlated where the features are
    scrambled = same(feats, feats[:, torch.randperm(6)].roll(1, dims=2), feats, feats)["loss"]
    assert aligned < scrambled


def test_the_head_is_deterministic_for_a_seed_and_the_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    projection = Projection(dim=8, steps=12, batch_size=3, knn=2, checkpoint_every=5)
    first = _attach(projection, tmp_path / "a").head.state_dict()
    second = _attach(projection, tmp_path / "b").head.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    heads = list((tmp_path / "a" / "projection").glob("*/head.pt"))
    assert len(heads) == 1

    monkeypatch.setattr(Projection, "_train", lambda *a, **k: pytest.fail("retrained: the cached head was not reused"))
    again = _attach(projection, tmp_path / "a").head.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    monkeypatch.undo()

    _attach(Projection(dim=8, steps=13, batch_size=3, knn=2, checkpoint_every=5), tmp_path / "a")
    assert len(list((tmp_path / "a" / "projection").glob("*/head.pt"))) == 2  # another setting: another head


def test_a_killed_head_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    projection = Projection(dim=8, steps=12, batch_size=3, knn=2, checkpoint_every=5)
    clean = _attach(projection, tmp_path / "clean").head.state_dict()

    class Killed(Exception):
        pass

    def kill_after_step_7(self, trainer, *args):
        if trainer.global_step == 7:
            raise Killed

    monkeypatch.setattr(pl.Callback, "on_train_batch_end", kill_after_step_7)
    with pytest.raises(Killed):
        _attach(projection, tmp_path / "killed")
    monkeypatch.undo()
    assert list((tmp_path / "killed" / "projection").glob("*/checkpoints/last.ckpt"))
    assert not list((tmp_path / "killed" / "projection").glob("*/head.pt"))
    resumed = _attach(projection, tmp_path / "killed").head.state_dict()
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)


def test_discover_runs_on_the_codes_and_the_run_remembers_the_head(tmp_path, cache_dir):
    import json

    from tests.test_bad_input import _load_entry_point

    out = tmp_path / "run"
    overrides = [
        "backbone=tiny_vit", "dataset=demo", "resize.size=64", "logger=none", "trainer.enable_progress_bar=false",
        "feature_head=stego", "feature_head.steps=10", "feature_head.batch_size=3", "feature_head.knn=2", "k=3", f"paths.cache_dir={cache_dir}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    cfg = compose_config("discover", overrides, out)
    try:
        _load_entry_point("discover").main(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert len(list((out / "pseudo_masks").glob("*.png"))) == len(DemoImages())
    assert json.loads((out / "run.json").read_text())["feature_head"]["steps"] == 10
    heads = list((tmp_path / "cache" / "projection").glob("*/head.pt"))
    report = json.loads((out / "summary.json").read_text())["feature_head"]
    assert len(heads) == 1 and report["path"] == str(heads[0]) and report["trained_this_run"]
    assert report["training_seconds"] > 0
    assert len(list((tmp_path / "cache" / "discovery").iterdir())) == 1

    # a head file that changed under the same settings (e.g. retrained after a fix) never reuses the segments
    # that the old head's codes made
    head, meta = load_head(heads[0])
    torch.nn.init.normal_(head.linear.weight)
    save_head(heads[0], head, meta)
    try:
        _load_entry_point("discover").main(compose_config("discover", overrides, out))
    finally:
        GlobalHydra.instance().clear()
    assert len(list((tmp_path / "cache" / "discovery").iterdir())) == 2
    assert not json.loads((out / "summary.json").read_text())["feature_head"]["trained_this_run"]


@pytest.mark.parametrize("backbone", list_backbones())
def test_the_head_config_composes_with_every_backbone(backbone, tmp_path):
    try:
        cfg = compose_config("discover", [f"backbone={backbone}", "feature_head=stego"], tmp_path)
    finally:
        GlobalHydra.instance().clear()
    projection = instantiate(cfg.feature_head)
    assert isinstance(projection, Projection) and cfg.graph.feature == "codes"
    check_codes(instantiate(cfg.method).features_read(), projection, cfg.graph.affinity.debias)


def test_a_head_file_of_another_backbone_or_width_is_refused(tmp_path):
    head = ProjectionHead(in_dim=32, out_dim=8)
    path = save_head(tmp_path / "head.pt", head, {"backbone": "dino_vits16", "features": ["keys"]})
    assert load_head(path, backbone="dino_vits16", in_dim=32)[0].out_dim == 8
    with pytest.raises(HeadFileError, match=r"feature_head.checkpoint=.*head.pt was trained on dino_vits16 features, "
                                            r"not tiny_vit's"):
        load_head(path, backbone="tiny_vit", in_dim=32)
    with pytest.raises(HeadFileError, match=r"reads 32-channel features, but \['keys'\] of this backbone have 64"):
        load_head(path, backbone="dino_vits16", in_dim=64)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HeadFileError, match=r"feature_head.checkpoint=.*garbage.pt: not a projection head file"):
        load_head(tmp_path / "garbage.pt")


@pytest.mark.parametrize(("overrides", "message"), [
    (["graph.feature=codes"], r"graph.feature=codes reads a feature head's codes: set feature_head=stego"),
    (["feature_head=stego", "graph.feature=keys", "graph.segment_feature=keys"],
     r"feature_head=stego trains a feature head but graph.feature, graph.segment_feature read keys"),
    (["feature_head=stego", "method=kmeans_patches"], r"set method.patch_feature=codes"),
    (["feature_head=stego", "graph.affinity.debias=remove_key_bias"], r"debias=remove_key_bias .* codes do not have"),
    (["feature_head=stego", "feature_head.samples=1"], r"feature_head.samples=1 must be >= 2"),
    (["feature_head=stego", "feature_head.checkpoint={missing}"], r"feature_head.checkpoint=.*nowhere.pt: no such file"),
])
def test_a_head_setting_that_does_not_fit_fails_before_any_work(tmp_path, monkeypatch, overrides, message):
    import datus.backbones.registry
    from tests.test_bad_input import _load_entry_point, _messages

    monkeypatch.setattr(datus.backbones.registry, "_vit", lambda *a, **k: pytest.fail("the backbone was built"))
    overrides = [o.format(missing=tmp_path / "nowhere.pt") for o in overrides]
    try:
        with pytest.raises(Exception) as info:
            cfg = compose_config("discover", ["backbone=tiny_vit", "logger=none", f"cache_dir={tmp_path / 'c'}",
                                              *overrides], tmp_path / "out")
            _load_entry_point("discover").main(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert re.search(message, _messages(info.value)), _messages(info.value)


def test_a_split_of_one_image_cannot_pair_neighbours():
    with pytest.raises(ValueError, match="needs at least 2 images"):
        nearest_images(torch.randn(1, 4), torch.zeros(4), k=5)


def test_the_head_picture_shows_raw_and_head_features_and_both_masks(tmp_path):
    """``python -m datus.viz feature_head``: one picture per image, the masks of two runs beside the two PCAs."""
    from PIL import Image

    from datus import viz
    from datus.masks import save_mask

    dataset = DemoImages()
    stems = [s.stem for s in dataset.samples][:2]
    for run in ("without", "with"):
        for i, stem in enumerate(stems):
            height, width = dataset.load(i)["image"].shape[-2:]
            save_mask(tmp_path / run / "pseudo_masks" / f"{stem}.png",
                      (torch.arange(height * width).reshape(height, width) % 3).numpy())
    viz.main(["feature_head", "--images", "2", "--out", str(tmp_path / "viz"), "--masks", str(tmp_path / "without" /
              "pseudo_masks"), "--masks", str(tmp_path / "with" / "pseudo_masks"), "backbone=tiny_vit", "resize.size=64",
              "feature_head=stego", "feature_head.steps=5", "feature_head.batch_size=3", "feature_head.knn=2", f"cache_dir={tmp_path / 'cache'}"])
    pictures = sorted((tmp_path / "viz" / "feature_head").glob("*.png"))
    assert [p.stem for p in pictures] == sorted(stems)
    with Image.open(pictures[0]) as picture:
        assert picture.width > 4 * picture.height  # image | two PCAs | two masks side by side


def test_a_head_can_read_earlier_blocks_too(tmp_path):
    """``feature_head.blocks``: the keys and an earlier block's tokens, concatenated (STEGO and CAUSE use several depths)."""
    backbone = _tiny()
    projected = _attach(Projection(dim=8, steps=6, batch_size=3, knn=2, blocks=[-2]), tmp_path, backbone=backbone)
    assert projected.head.in_dim == 2 * backbone.embed_dim
    images = _demo()[0]["image"][None]
    out = projected(projected.normalize(images))
    assert out.codes.shape == (1, out.grid[0] * out.grid[1], 8) and out.hidden is not None
