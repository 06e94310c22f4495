"""DINO attention-map masks (datus.foreground) and their command (python -m datus.attention)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from datus.backbones import build_backbone
from datus.data import DemoImages
from datus.foreground import ForegroundScore, attention_masks, thing_mask


def _real_attention() -> torch.Tensor:
    """CLS attention of every head of a (random-weight) ViT on a real photo: peaked, uneven maps."""
    backbone = build_backbone("tiny_vit", weights="random")
    image = DemoImages().load(0)["image"]
    image = torch.nn.functional.interpolate(image[None].float(), size=(64, 64)).round().to(torch.uint8)
    return backbone(backbone.normalize(image)).attentions[0]


@pytest.mark.parametrize("mass", [0.1, 0.6, 0.9, 1.0])
def test_attention_masks_keep_the_requested_mass_and_no_more_patches_than_needed(mass):
    torch.manual_seed(0)
    maps = torch.cat([_real_attention(), torch.distributions.Dirichlet(torch.full((64,), 0.3)).sample((3,))])
    masks = attention_masks(maps, mass)
    weights = maps / maps.sum(-1, keepdim=True)
    for w, m in zip(weights, masks):
        kept = w[m]
        assert kept.sum() >= mass - 1e-6
        assert kept.sum() - kept.min() < mass  # without its weakest patch the mask would hold too little
        assert (~m).sum() == 0 or w[~m].max() <= kept.min()  # the strongest patches are the ones kept


def test_attention_masks_refuse_a_mass_outside_0_1():
    with pytest.raises(ValueError, match=r"mass=1.5 must be in \(0, 1\]"):
        attention_masks(torch.rand(4), 1.5)


def test_the_foreground_iou_counts_every_labelled_pixel_and_leaves_void_out():
    truth = np.zeros((4, 4), dtype=bool)
    truth[:2, :2] = True  # 4 thing pixels
    predicted = np.zeros((4, 4), dtype=bool)
    predicted[:2, :3] = True  # 6 predicted: 4 right, 2 wrong
    valid = np.ones((4, 4), dtype=bool)
    valid[0, 2] = False  # one wrong prediction falls on void: not counted
    score = ForegroundScore()
    assert score.update(predicted, truth, valid) == pytest.approx(4 / 5)
    assert score.update(np.zeros_like(truth), np.zeros_like(truth), valid) is None  # nothing to find, nothing found
    result = score.result()
    assert result["iou"] == pytest.approx(80.0) and result["mean_jaccard"] == pytest.approx(80.0)
    assert result["foreground_fraction"] == pytest.approx(100 * 5 / 30)


def test_thing_classes_are_named_by_the_dataset_and_checked():
    from datus.data.camvid import CAMVID_CLASSES, CamVid

    assert set(CamVid.things) == {"Car", "Pedestrian", "Bicyclist", "SignSymbol", "Pole", "Fence"}
    mask = np.array([[CAMVID_CLASSES.index("Car"), CAMVID_CLASSES.index("Road"), 255]])
    assert thing_mask(mask, CAMVID_CLASSES, CamVid.things).tolist() == [[True, False, False]]
    with pytest.raises(ValueError, match=r"Truck not among the classes"):
        thing_mask(mask, CAMVID_CLASSES, ["Car", "Truck"])


@pytest.mark.slow
def test_the_attention_command_scores_every_image_and_draws_the_first(tmp_path):
    """On real photos with ground truth (bright pixels are the 'thing'): one row per head, the heads'
    mean and the all-foreground reference, whose IoU is the things' share of the labelled pixels."""
    from datus.attention import main

    images, masks = tmp_path / "data" / "val" / "images", tmp_path / "data" / "val" / "true_masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    things = labelled = 0
    for i in range(3):
        photo = DemoImages().load(i)["image"].permute(1, 2, 0).numpy()
        gray = np.asarray(Image.fromarray(photo).convert("L"))
        truth = (gray > np.percentile(gray, 70)).astype(np.uint8)
        truth[:4] = 255  # void rows
        Image.fromarray(photo).save(images / f"p{i}.png")
        Image.fromarray(truth).save(masks / f"p{i}.png")
        things, labelled = things + int((truth == 1).sum()), labelled + int((truth != 255).sum())
    out = tmp_path / "out"
    try:
        report = main(["--out", str(out), "--pictures", "2", "--things", "bright", "backbone=tiny_vit",
                       "backbone.weights=random", "dataset=folder", f"dataset.root={tmp_path / 'data'}",
                       "dataset.split=val", "dataset.num_classes=2", "dataset.class_names=[dark,bright]",
                       "resize.size=64"])
    finally:
        GlobalHydra.instance().clear()
    rows = {r["mask"]: r for r in json.loads((out / "attention.json").read_text())["rows"]}
    heads = build_backbone("tiny_vit", weights="random").num_heads
    assert report["images"] == 3 and len([m for m in rows if m.startswith("head ")]) == heads
    assert rows["everything foreground"]["iou"] == pytest.approx(100 * things / labelled)
    assert rows["everything foreground"]["foreground_fraction"] == pytest.approx(100.0)
    for name, row in rows.items():
        assert 0 <= row["iou"] <= 100, name
        if name.startswith("head "):
            assert row["foreground_fraction"] < 100
    assert sorted(p.name for p in (out / "pictures").glob("*.png")) == ["p0.png", "p1.png"]
    assert (out / "attention.md").read_text().count("| head ") == heads
