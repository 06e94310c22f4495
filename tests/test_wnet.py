"""W-Net (method=wnet, graph=wnet): the windowed soft N-cut, training, resume, outputs and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from datus.data import DemoImages
from datus.masks import read_mask
from datus.wnet import SoftNCut, WNet, WNetFileError, WNetTraining, load_wnet
from datus.wnet.data import resize_image
from datus.wnet.stage import save_wnet
from tests.conftest import compose_config

TINY = dict(widths=(8, 16), input_size=(32, 48), batch_size=4, pictures=2)


def dense_soft_ncut(probs: torch.Tensor, image: torch.Tensor, radius: float, sigma_i: float, sigma_x: float):
    """The paper's formula with the whole (HW)^2 affinity matrix: the reference for tiny images."""
    batch, k, height, width = probs.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    positions = torch.stack([ys.ravel(), xs.ravel()], dim=1).double()
    squared = ((positions[:, None] - positions[None]) ** 2).sum(-1)
    total = 0.0
    for b in range(batch):
        pixels = image[b].reshape(image.shape[1], -1).T.double()
        w = torch.exp(-((pixels[:, None] - pixels[None]) ** 2).sum(-1) / sigma_i**2 - squared / sigma_x**2)
        w = w * (squared.sqrt() < radius)
        p = probs[b].reshape(k, -1).double()
        total += k - sum((p[c] @ w @ p[c]) / (p[c] @ w.sum(1)) for c in range(k))
    return total / batch


def _photo(size=(48, 64)) -> torch.Tensor:
    """A real colour photograph (scikit-image's, shipped offline) as (1, 3, H, W) in 0..255."""
    image = DemoImages().load(0)["image"]
    return resize_image(image, size).double()[None]


@pytest.mark.parametrize(("radius", "sigma_i", "sigma_x"), [(5.0, 10.0, 4.0), (2.5, 40.0, 1.5), (1.0, 10.0, 4.0)])
def test_the_windowed_soft_ncut_equals_the_dense_reference(radius, sigma_i, sigma_x):
    torch.manual_seed(0)
    image = torch.cat([_photo((9, 11)), torch.rand(1, 3, 9, 11, dtype=torch.float64) * 255])
    probs = torch.softmax(torch.randn(2, 4, 9, 11, dtype=torch.float64) * 2, dim=1)
    windowed = SoftNCut(radius=radius, sigma_i=sigma_i, sigma_x=sigma_x)(probs, image)
    dense = dense_soft_ncut(probs, image, radius, sigma_i, sigma_x)
    assert abs(float(windowed) - float(dense)) < 1e-5
    assert 0 <= float(windowed) <= 4 - 1


def test_the_soft_ncut_is_lower_for_a_segmentation_that_follows_the_edges():
    """On a real photo, a 2-way split at its brightness edges beats the same split shifted off them."""
    image = _photo()
    gray = image[0].mean(dim=0)
    edges = (gray > gray.median()).double()
    follows = torch.stack([edges, 1 - edges])[None]
    shifted = torch.roll(follows, shifts=(6, 9), dims=(2, 3))
    blocky = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(follows, 16), size=gray.shape)
    loss = SoftNCut()
    assert loss(follows, image) < loss(shifted, image)
    assert loss(follows, image) < loss(blocky, image)
    # and gradient descent on free memberships lowers it from a random start
    logits = torch.randn(1, 2, *gray.shape, dtype=torch.float64, requires_grad=True)
    optim = torch.optim.Adam([logits], lr=0.1)
    first = loss(logits.softmax(1), image).item()
    for _ in range(30):
        optim.zero_grad()
        value = loss(logits.softmax(1), image)
        value.backward()
        optim.step()
    assert value.item() < first


def test_the_wnet_keeps_the_image_size_for_any_input():
    model = WNet(k=5, widths=(4, 8, 16)).eval()
    for shape in [(2, 3, 32, 48), (1, 3, 5, 3), (1, 1, 21, 30)]:  # a multiple of the stride, smaller, grayscale
        probs, reconstruction = model(torch.rand(shape))
        assert probs.shape == (shape[0], 5, *shape[2:]) and reconstruction.shape == (shape[0], 3, *shape[2:])
        assert torch.allclose(probs.sum(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"needs \(B, 3, H, W\) RGB"):
        model(torch.rand(1, 4, 8, 8))


@pytest.mark.slow
def test_a_few_training_epochs_on_real_photos_lower_both_losses(tmp_path):
    training = WNetTraining(**TINY, epochs=12, lr=3e-3)
    training.prepare(DemoImages(), cache_root=tmp_path, k=4)
    history = training.report["history"]
    assert len(history) == 12
    for loss in ("ncut", "reconstruction"):
        start = np.mean([h[loss] for h in history[:2]])
        end = np.mean([h[loss] for h in history[-2:]])
        assert end < start, (loss, [round(h[loss], 4) for h in history])
    folder = Path(training.report["path"]).parent
    assert (folder / "pictures" / "loss_curves.png").is_file() and (folder / "pictures" / "epoch_012.png").is_file()
    assert (folder / "log" / "metrics.csv").is_file()


@pytest.mark.slow
def test_a_killed_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from datus.wnet import callbacks

    settings = dict(**TINY, epochs=4, seed=3)
    WNetTraining(**settings).prepare(DemoImages(), cache_root=tmp_path / "clean", k=3)
    clean, _ = load_wnet(next((tmp_path / "clean" / "wnet").glob("*/wnet.pt")))

    original = callbacks.WNetPictures.on_train_epoch_end

    def crash(self, trainer, pl_module):
        original(self, trainer, pl_module)
        if trainer.current_epoch == 2:  # before the third epoch's checkpoint (checkpoints run last): resume from the second's
            raise RuntimeError("killed")

    monkeypatch.setattr(callbacks.WNetPictures, "on_train_epoch_end", crash)
    with pytest.raises(RuntimeError, match="killed"):
        WNetTraining(**settings).prepare(DemoImages(), cache_root=tmp_path / "killed", k=3)
    monkeypatch.setattr(callbacks.WNetPictures, "on_train_epoch_end", original)
    assert not list((tmp_path / "killed" / "wnet").glob("*/wnet.pt"))
    resumed_training = WNetTraining(**settings)
    resumed_training.prepare(DemoImages(), cache_root=tmp_path / "killed", k=3)
    resumed, _ = load_wnet(resumed_training.report["path"])
    for name, value in clean.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert len(resumed_training.report["history"]) == 4


def _folder_dataset(root: Path, split: str = "val") -> list[tuple[str, tuple[int, int]]]:
    """Real photos of different sizes, one grayscale and one smaller than the U-Nets' stride, with masks."""
    photos = DemoImages()
    images = root / split / "images"
    masks = root / split / "true_masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    made = []
    for i, (size, mode) in enumerate([((60, 80), "RGB"), ((45, 70), "RGB"), ((50, 50), "L"), ((5, 6), "RGB")]):
        picture = Image.fromarray(photos.load(i)["image"].permute(1, 2, 0).numpy()).resize(size[::-1]).convert(mode)
        picture.save(images / f"img{i}.png")
        gray = np.asarray(picture.convert("L"))
        Image.fromarray((gray > np.median(gray)).astype(np.uint8)).save(masks / f"img{i}.png")
        made.append((f"img{i}", size))
    return made


def _discover(out: Path, overrides: list[str]):
    from tests.conftest import run_discover

    return run_discover(out, overrides)


@pytest.mark.slow
def test_method_wnet_writes_masks_of_each_image_size_with_labels_below_k(tmp_path):
    """Mixed sizes, a grayscale image and one smaller than the stride: converted, segmented, evaluated."""
    made = _folder_dataset(tmp_path / "data")
    (tmp_path / "data" / "val" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "data" / "val" / "true_masks" / "broken.png")
    out = tmp_path / "run"
    miou = _discover(out, ["method=wnet", "dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.split=val",
                           "dataset.num_classes=2", "k=3", "wnet.widths=[8,16,32]", "wnet.input_size=[32,48]",
                           "wnet.epochs=2", "wnet.batch_size=2", f"cache_dir={tmp_path / 'cache'}"])
    for stem, size in made:
        mask = read_mask(out / "pseudo_masks" / f"{stem}.png")
        assert mask.shape == size and mask.max() < 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "wnet" and summary["labeling"]["coverage"] == 1.0 and summary["backbone"] is None
    assert summary["wnet"]["trained_this_run"] and summary["wnet"]["epochs"] == 2
    assert [e["stem"] for e in summary["labeling"]["skipped"]] == ["broken"]  # skipped by name, the run goes on
    assert not (out / "pseudo_masks" / "broken.png").exists()
    assert 0 <= miou <= 100 and json.loads((out / "metrics.json").read_text())["miou"] == miou
    assert (out / "pictures" / "wnet_loss_curves.png").is_file() and (out / "pictures" / "wnet_samples.png").is_file()
    # a second run with the same settings reuses the trained W-Net
    _discover(tmp_path / "again", ["method=wnet", "dataset=folder", f"dataset.root={tmp_path / 'data'}",
                                   "dataset.split=val", "dataset.num_classes=2", "k=3", "wnet.widths=[8,16,32]",
                                   "wnet.input_size=[32,48]", "wnet.epochs=2", "wnet.batch_size=2",
                                   f"cache_dir={tmp_path / 'cache'}"])
    assert not json.loads((tmp_path / "again" / "summary.json").read_text())["wnet"]["trained_this_run"]


@pytest.mark.slow
def test_a_wnet_trained_on_one_split_segments_another(tmp_path):
    made = _folder_dataset(tmp_path / "data", "val")
    _folder_dataset(tmp_path / "data", "train")
    (tmp_path / "data" / "train" / "images" / "img3.png").unlink()  # a train split of 3 images
    (tmp_path / "data" / "train" / "true_masks" / "img3.png").unlink()
    out = tmp_path / "run"
    _discover(out, ["method=wnet", "dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.split=val",
                    "dataset.num_classes=2", "k=3", "wnet.train_split=train", "wnet.widths=[8,16]",
                    "wnet.input_size=[32,48]", "wnet.epochs=1", "wnet.batch_size=2", f"cache_dir={tmp_path / 'c'}"])
    wnet = json.loads((out / "summary.json").read_text())["wnet"]
    assert wnet["train_split"] == "train" and wnet["training_images"] == 3
    assert sorted(p.stem for p in (out / "pseudo_masks").glob("*.png")) == [stem for stem, _ in made]
    config = json.loads((Path(wnet["path"]).parent / "config.json").read_text())
    assert config["dataset"]["split"] == "train"


@pytest.mark.slow
def test_graph_wnet_decomposes_into_connected_regions_of_wnet_classes(tmp_path):
    """W-Net's K-way output as DatUS²'s scene decomposition: segments are regions of one W-Net class."""
    from datus.discovery import SegmentStore

    out = tmp_path / "run"
    _discover(out, ["graph=wnet", "backbone=tiny_vit", "dataset=demo", "resize.size=64", "k=3", "wnet.epochs=2",
                    "wnet.widths=[8,16]", "wnet.input_size=[32,48]", "wnet.batch_size=2", f"cache_dir={tmp_path / 'c'}"])
    records = list(SegmentStore(out / "segments"))
    assert len(records) == len(DemoImages())
    for record in records:
        dec = record.decomposition
        assert dec.communities.max() < 3 and dec.segments.shape == tuple(record.grid)
        for segment, community in enumerate(dec.segment_community):  # each segment lies in one W-Net class
            assert np.all(dec.communities[dec.segments == segment] == community)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wnet"]["trained_this_run"] and len(list((out / "pseudo_masks").glob("*.png"))) == 5


def test_a_wnet_file_of_another_k_or_not_a_wnet_is_refused(tmp_path):
    path = save_wnet(tmp_path / "wnet.pt", WNet(k=3, widths=(4, 8)), {})
    assert load_wnet(path, k=3)[0].k == 3
    with pytest.raises(WNetFileError, match=r"segments into K=3 classes, but k=5: pass k=3"):
        load_wnet(path, k=5)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(WNetFileError, match=r"junk.pt: not a W-Net file"):
        load_wnet(tmp_path / "junk.pt")


@pytest.mark.parametrize(("overrides", "message"), [
    (["k=1"], r"k=1 must be a whole number >= 2"),
    (["wnet.input_size=[30,40]"], r"wnet.input_size=\[30, 40\]: .*multiples of the U-Nets' total stride 8.*\[32, 40\]"),
    (["wnet.batch_size=1"], r"wnet.batch_size=1 must be >= 2 \(batch norm needs two images per batch\)"),
    (["wnet.ncut.radius=0"], r"ncut.radius=0 must be > 0"),
    (["feature_head=stego"], r"feature_head=stego trains a feature head on backbone features, which this method does not read"),
    (["wnet.checkpoint={missing}"], r"wnet.checkpoint=.*nowhere.pt: no such file"),
])
def test_a_wnet_setting_that_does_not_fit_fails_before_any_work(tmp_path, overrides, message):
    from tests.test_bad_input import _messages

    overrides = [o.format(missing=tmp_path / "nowhere.pt") for o in overrides]
    with pytest.raises(Exception) as info:
        _discover(tmp_path / "out", ["method=wnet", "dataset=demo", f"cache_dir={tmp_path / 'c'}", *overrides])
    assert re.search(message, _messages(info.value)), _messages(info.value)
    assert not (tmp_path / "c" / "wnet").exists()


def test_the_paper_preset_has_the_papers_network():
    try:
        cfg = compose_config("discover", ["method=wnet", "wnet=paper"], Path("/tmp"))
    finally:
        GlobalHydra.instance().clear()
    from hydra.utils import instantiate

    method = instantiate(cfg.method)
    assert method.wnet.widths == [64, 128, 256, 512, 1024] and method.wnet.input_size == (224, 224)
    assert method.wnet.dropout == 0.65 and method.wnet.stride == 16
