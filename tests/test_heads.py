"""Heads on frozen features (train.py model=linear_head|deeplabv3_head|segmenter|align_block), the feature
cache, the dense CRF and the refinement's bad-input checks, on real photos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from PIL import Image

from datus.backbones import build_backbone
from datus.data import DemoImages
from datus.features import FeatureSpec
from datus.refine import build_head, list_heads, load_refiner
from datus.refine.data import PseudoMaskError
from tests.conftest import PROJECT_ROOT, compose_config, perturbed_tiny_vit

HEADS = ("linear_head", "deeplabv3_head", "segmenter", "align_block")
K = 4


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos as a folder dataset (train 4, val 2, 3-class masks), train pseudo masks with K=4 and
    k-means centroids of the tiny backbone's keys, in discover.py's layout (run/pseudo_masks, run/labeling)."""
    root = tmp_path_factory.mktemp("heads")
    pseudo = root / "run" / "pseudo_masks"
    pseudo.mkdir(parents=True)
    for split, items in (("train", list(DemoImages())[:4]), ("val", list(DemoImages())[3:])):
        (root / "data" / split / "images").mkdir(parents=True)
        (root / "data" / split / "true_masks").mkdir()
        for item in items:
            image = item["image"].permute(1, 2, 0).numpy()[::4, ::4]
            Image.fromarray(np.ascontiguousarray(image)).save(root / "data" / split / "images" / f"{item['stem']}.png")
            truth = (image.mean(axis=2) // 86).astype(np.uint8)
            Image.fromarray(truth).save(root / "data" / split / "true_masks" / f"{item['stem']}.png")
            if split == "train":
                mask = (image[..., 0] > image[..., 2]).astype(np.uint8) * 2 + (image.mean(axis=2) > 128)
                mask[:3] = 255
                Image.fromarray(mask.astype(np.uint8)).save(pseudo / f"{item['stem']}.png")
    from datus.labeling import KMeans

    rng = np.random.default_rng(0)
    km = KMeans(K, center=True).fit(rng.normal(size=(64, 48)).astype(np.float32))  # tiny_vit: 48-d keys
    km.save(root / "run" / "labeling" / "centroids.npz")
    return root


def _overrides(photos, out, model="linear_head", *extra):
    return ["dataset=folder", f"dataset.root={photos / 'data'}", "dataset.num_classes=3", f"model={model}",
            f"pseudo_masks={photos / 'run' / 'pseudo_masks'}", "backbone=tiny_vit", "resize.size=64",
            "logger=none", "trainer.enable_progress_bar=false", "model.data.batch_size=2", "batch_size=2",
            f"cache_dir={out / 'cache'}", f"hydra.run.dir={out}", *extra]


def _refine(photos, out, model="linear_head", *extra):
    from datus.cli.train import refine_from_config

    cfg = compose_config("train", _overrides(photos, out, model, *extra), out)
    return refine_from_config(cfg, loggers=[])


@pytest.mark.parametrize("model", HEADS)
def test_each_head_trains_validates_and_writes_masks_at_image_size(photos, tmp_path, model):
    history = _refine(photos, tmp_path, model, "trainer.max_epochs=2", "predict=true", "postprocess=none")
    entry = history[-1]
    assert 0 <= entry["best_val_miou"] <= 1 and 0 <= entry["refined_train_miou"] <= 1
    module = load_refiner(entry["best_checkpoint"])
    assert type(module).__name__ == "HeadModule" and module.hparams.head["name"] in list_heads()
    written = sorted((tmp_path / "refined" / "pseudo_masks").glob("*.png"))
    assert len(written) == 4
    for path in written:
        mask = np.asarray(Image.open(path))
        image = Image.open(photos / "data" / "train" / "images" / path.name)
        assert mask.shape == image.size[::-1] and mask.max() < K  # full resolution, every pixel labelled
    assert (tmp_path / "val_pictures").is_dir()


@pytest.mark.parametrize("name", ["linear", "deeplabv3", "segmenter", "align_block"])
def test_heads_map_feature_maps_to_k_logits_on_the_same_grid(name):
    head = build_head(name, in_dim=48, num_classes=5)
    logits = head(torch.randn(2, 48, 7, 9))
    assert logits.shape == (2, 5, 7, 9)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


def test_the_feature_cache_is_reused_and_invalidated_by_a_settings_change(photos, tmp_path):
    cache = tmp_path / "cache" / "features"
    _refine(photos, tmp_path / "a", "linear_head", f"cache_dir={tmp_path / 'cache'}", "debug=fdr", "postprocess=none")
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2  # train and val
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}
    _refine(photos, tmp_path / "b", "segmenter", f"cache_dir={tmp_path / 'cache'}", "debug=fdr", "postprocess=none")
    assert sorted(p.name for p in cache.iterdir()) == entries  # another head, the same feature maps
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")} == stamps  # not rewritten
    _refine(photos, tmp_path / "c", "linear_head", f"cache_dir={tmp_path / 'cache'}", "debug=fdr", "postprocess=none",
            "model.features.names=[tokens]")
    assert len(list(cache.iterdir())) == 4  # other features: new entries
    config = json.loads(next(cache.glob("*/config.json")).read_text())
    assert {"backbone", "resize", "features", "dataset"} <= set(config)
    weights = tmp_path / "ckpt.pth"
    for seed, entries in ((1, 6), (2, 8)):  # a checkpoint rewritten in place: new maps, not the old file's
        torch.save(perturbed_tiny_vit(seed), weights)
        _refine(photos, tmp_path / f"w{seed}", "linear_head", f"cache_dir={tmp_path / 'cache'}", "debug=fdr",
                "postprocess=none", f"backbone.weights={weights}")
        assert len(list(cache.iterdir())) == entries


def test_cached_maps_equal_the_backbone_features(photos, tmp_path):
    from datus.data import ImageFolder
    from datus.features import FeatureCache, feature_maps
    from datus.transforms import ResizeForBackbone

    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit")
    spec = FeatureSpec(names=("keys", "tokens"), blocks=(0,))
    resize = ResizeForBackbone(64, 8)
    dataset = ImageFolder(root=photos / "data", split="train", num_classes=3)
    import pytorch_lightning as pl

    cache = FeatureCache(tmp_path, tmp_path, lambda: pl.Trainer(accelerator="cpu", logger=False,
                                                                enable_progress_bar=False))
    index = cache.index(dataset, backbone=lambda: backbone, backbone_settings={"name": "tiny_vit"}, resize=resize,
                        spec=spec)
    assert len(index) == 4 and spec.dim(backbone) == 3 * 48
    for i in range(4):
        expected = feature_maps(backbone, resize(dataset.load(i))["image"][None], spec)[0]
        assert index[i].shape == tuple(expected.shape) and index.orig_size(i) == tuple(dataset.load(i)["image"].shape[1:])
        assert np.allclose(index[i].astype(np.float32), expected.numpy(), atol=2e-2, rtol=1e-2)  # float16


def test_the_crf_keeps_labels_in_range_and_moves_a_boundary_to_the_image_edge():
    """Two colours meeting at column 40; coarse scores put the boundary at column 32: the CRF follows the image."""
    from datus.postprocess import DenseCRF, labels_from_scores

    height, width = 48, 80
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, :40] = (200, 30, 30)
    image[:, 40:] = (30, 30, 200)
    grid = torch.zeros(3, 6, 10)  # K = 3 on an 8-px grid; the third class is never likely
    grid[0, :, :4], grid[1, :, 4:], grid[2] = 2.0, 2.0, -4.0
    plain = labels_from_scores(grid, (height, width))
    sharp = DenseCRF()(image, grid)
    assert sharp.shape == (height, width) and sharp.dtype == np.uint8 and sharp.max() < 3

    def boundary(labels):  # mean column where label 1 starts
        return float(np.mean([np.argmax(row == 1) for row in labels]))

    assert abs(boundary(plain) - 40) >= 6
    assert abs(boundary(sharp) - 40) < abs(boundary(plain) - 40) / 3
    assert (sharp[:, :38] == 0).all() and (sharp[:, 42:] == 1).all()
    # a photo as np.asarray(PIL image) gives it: a read-only buffer, which pydensecrf alone refuses
    image.setflags(write=False)
    assert np.array_equal(DenseCRF()(image, grid), sharp)


def test_refined_masks_through_the_crf(photos, tmp_path):
    history = _refine(photos, tmp_path, "linear_head", "debug=fdr", "predict=true", "postprocess=crf")
    assert "refined_train_miou" in history[-1]
    for path in (tmp_path / "refined" / "pseudo_masks").glob("*.png"):
        assert np.asarray(Image.open(path)).max() < K


def test_self_training_rounds_learn_the_previous_rounds_masks(photos, tmp_path):
    history = _refine(photos, tmp_path, "linear_head", "debug=fdr", "rounds=2", "postprocess=none")
    assert [h["round"] for h in history] == [0, 1]
    assert history[1]["pseudo_masks"] == str(tmp_path / "round_1" / "pseudo_masks")
    assert len(list((tmp_path / "round_1" / "pseudo_masks").glob("*.png"))) == 4


def test_evaluate_scores_a_head_checkpoint_on_another_split(photos, tmp_path):
    history = _refine(photos, tmp_path / "train", "linear_head", "trainer.max_epochs=1", "postprocess=none")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "dataset=folder", f"dataset.root={photos / 'data'}", "dataset.split=val",
         "dataset.num_classes=3", f"ckpt={history[-1]['best_checkpoint']}", "logger=none", "postprocess=crf",
         f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_clusters"] == K and metrics["coverage"] == 1.0 and metrics["images"] == 2


@pytest.mark.slow
def test_the_linear_head_on_the_packaged_dinov2(photos, tmp_path, cache_dir):
    pytest.importorskip("onnx")
    from datus.cli.train import refine_from_config

    overrides = [o for o in _overrides(photos, tmp_path, "linear_head", "trainer.max_epochs=2", "predict=true")
                 if not o.startswith(("backbone=", "resize.size="))]
    cfg = compose_config("train", [*overrides, f"paths.cache_dir={cache_dir}", "resize.size=112"], tmp_path)
    history = refine_from_config(cfg, loggers=[])
    assert history[-1]["best_val_miou"] > 0
    assert len(list((tmp_path / "refined" / "pseudo_masks").glob("*.png"))) == 4


@pytest.mark.slow
def test_a_killed_head_training_resumes_to_the_same_weights(photos, tmp_path):
    command = [sys.executable, "train.py", *_overrides(photos, tmp_path, "segmenter", "trainer.max_epochs=4",
                                                         "postprocess=none")]
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not last.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    first = torch.load(last, weights_only=True)
    if first["epoch"] >= 3:
        pytest.skip("the run finished before it could be killed")
    subprocess.run([*command, "ckpt_path=last"], cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=600)
    clean_dir = tmp_path / "clean"
    subprocess.run([sys.executable, "train.py", *_overrides(photos, clean_dir, "segmenter", "trainer.max_epochs=4",
                                                            "postprocess=none")],
                   cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=600)
    final = torch.load(last, weights_only=True)
    clean = torch.load(clean_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == clean["global_step"] > first["global_step"]
    for name, weight in clean["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), name


# -- bad input: each refused before training, naming the setting or file ------------------------------
def test_pseudo_masks_with_labels_beyond_k_are_refused(photos, tmp_path):
    with pytest.raises(PseudoMaskError, match=r"k=3 but .* hold larger labels"):
        _refine(photos, tmp_path, "linear_head", "k=3", "debug=fdr")


def test_pseudo_masks_of_the_wrong_size_are_refused(photos, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in (photos / "run" / "pseudo_masks").glob("*.png"):
        mask = np.asarray(Image.open(path))
        Image.fromarray(mask[:-2] if path.stem == "coffee" else mask).save(masks / path.name)
    with pytest.raises(PseudoMaskError, match=r"coffee.png is .* its image"):
        _refine(photos, tmp_path, "linear_head", f"pseudo_masks={masks}", "debug=fdr")


def test_pseudo_masks_of_a_photo_with_exif_rotation_are_accepted(tmp_path):
    """A camera photo stored landscape with EXIF orientation 6 is read portrait (as it is shown), and
    discover.py writes its mask portrait; train.py compared that with the file's stored landscape
    size and refused discover.py's own masks ("is 480x360, its image 360x480")."""
    from datus.data import ImageFolder
    from datus.masks import save_mask
    from datus.refine.data import check_pseudo_masks

    images = tmp_path / "data" / "train" / "images"
    images.mkdir(parents=True)
    photo = Image.fromarray(DemoImages()[0]["image"].permute(1, 2, 0).numpy()[:60:2, :80:2].copy())
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    photo.save(images / "camera.jpg", exif=exif)
    dataset = ImageFolder(tmp_path / "data", "train")
    height, width = dataset.load(0)["image"].shape[-2:]
    assert (height, width) == (40, 30)  # portrait, as shown
    mask = np.zeros((height, width), np.uint8)
    mask[:5] = 2
    save_mask(tmp_path / "masks" / "camera.png", mask)
    assert check_pseudo_masks(dataset, tmp_path / "masks") == 3  # accepted; K inferred from the labels
    save_mask(tmp_path / "masks" / "camera.png", np.zeros((width, height), np.uint8))  # the stored orientation
    with pytest.raises(PseudoMaskError, match=r"camera.png is 40x30, its image 30x40"):
        check_pseudo_masks(dataset, tmp_path / "masks")


def test_a_head_that_does_not_fit_the_backbone_is_refused(photos, tmp_path):
    from datus.backbones import BackboneError

    with pytest.raises(BackboneError, match="block -5 does not exist"):
        _refine(photos, tmp_path / "a", "linear_head", "model.features.blocks=[-5]", "debug=fdr")
    with pytest.raises(InstantiationException, match="model.head.dim=30 must be a multiple of"):
        _refine(photos, tmp_path / "b", "segmenter", "model.head.dim=30", "debug=fdr")


def test_centroids_of_another_backbone_are_refused(photos, tmp_path):
    from datus.labeling import KMeans

    other = KMeans(K).fit(np.random.default_rng(0).normal(size=(40, 384)).astype(np.float32))  # ViT-S/14 keys
    other.save(tmp_path / "centroids.npz")
    with pytest.raises(InstantiationException, match=r"384-d centroids but the features are 48-d"):
        _refine(photos, tmp_path, "align_block", f"model.head.centroids={tmp_path / 'centroids.npz'}", "debug=fdr")
    with pytest.raises(InstantiationException, match="no such file"):
        _refine(photos, tmp_path, "align_block", f"model.head.centroids={tmp_path / 'none.npz'}", "debug=fdr")


@pytest.mark.parametrize("method", ["datus", "kmeans_patches"])
def test_discover_makes_masks_through_the_crf_from_cluster_scores(tmp_path, cache_dir, method):
    """postprocess=crf: pixel-level masks (not one label per patch), labels in range; without fill the
    invalid segments' pixels stay unlabelled exactly as without the CRF."""
    from datus.cli.discover import pipeline_kwargs
    from datus.pipeline import run_pipeline

    masks = {}
    for post in ("none", "crf"):
        out = tmp_path / post
        cfg = compose_config("discover", ["backbone=tiny_vit", "resize.size=64", "logger=none", f"method={method}",
                                          "k=3", "labeling.fill=false", f"postprocess={post}",
                                          "trainer.enable_progress_bar=false", f"paths.cache_dir={cache_dir}"], out)
        summary = run_pipeline(**pipeline_kwargs(cfg, out))
        masks[post] = {p.name: np.asarray(Image.open(p)) for p in sorted((out / "pseudo_masks").glob("*.png"))}
        assert len(masks[post]) == 5
    assert summary["labeling"]["postprocessed"]
    changed = 0
    for name, plain in masks["none"].items():
        sharp = masks["crf"][name]
        assert sharp.shape == plain.shape and set(np.unique(sharp)) <= {0, 1, 2, 255}
        assert ((sharp == 255) == (plain == 255)).all()
        changed += int((sharp != plain).sum())
    assert changed > 0


@pytest.mark.parametrize("model", sorted(p.stem for p in (PROJECT_ROOT / "conf" / "model").glob("[!_]*.yaml")))
def test_model_configs_compose_and_instantiate(model, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config("train", [f"model={model}", "k=5", "pseudo_masks=/data/run/pseudo_masks"], tmp_path)
    if model == "align_block":
        assert cfg.model.head.centroids == "/data/run/pseudo_masks/../labeling/centroids.npz"
        cfg.model.head.centroids = None
    if model == "align_text":  # CLIP's text embeddings of 5 names (method=clip_sam writes them) as prototypes
        assert cfg.model.head.prototypes == "/data/run/pseudo_masks/../labeling/text_embeddings.npz"
        np.savez(tmp_path / "text.npz", text_embeddings=np.random.default_rng(0).normal(size=(5, 32)),
                 class_names=np.array(list("abcde")))
        cfg.model.head.prototypes = str(tmp_path / "text.npz")
        assert cfg.model.matching == "identity"
    module = instantiate(cfg.model, num_clusters=5, class_names=["a", "b"])  # K is given by train.py
    assert module.hparams.num_clusters == 5
    if model.startswith("deeplabv3_") and model != "deeplabv3_head":
        assert set(module.hparams.data) >= {"crop_size", "eval_short_side"}
    else:
        assert module.hparams.backbone["name"] == "dinov2_vits14" and module.hparams.resize == {"size": 448,
                                                                                                "mode": "short_side"}
        assert module.eval()(torch.randn(1, 384, 4, 5)).shape == (1, 5, 4, 5)


def test_training_refuses_zero_epochs(photos, tmp_path):
    """trainer.max_epochs=0 predict=true would write "refined" masks from an untrained network."""
    with pytest.raises(ValueError, match=r"trainer\.max_epochs=0 trains nothing"):
        _refine(photos, tmp_path, "linear_head", "trainer.max_epochs=0", "predict=true")
    assert not (tmp_path / "refined").exists()


def test_a_training_run_dir_refuses_other_pseudo_masks_and_a_longer_schedule(photos, tmp_path):
    """ckpt_path=last never resumes checkpoints trained on other pseudo masks, nor stretches a finished
    one-cycle schedule; both are refused naming what changed, and overwrite=true starts afresh."""
    import shutil

    from datus.runs import RunConflictError

    out = tmp_path / "run"
    _refine(photos, out, "linear_head", "trainer.max_epochs=1", "val_split=null")
    assert (out / "checkpoints" / "last.ckpt").is_file()
    other = tmp_path / "other_masks"
    shutil.copytree(photos / "run" / "pseudo_masks", other)
    first = sorted(other.glob("*.png"))[0]
    mask = np.asarray(Image.open(first)).copy()
    mask[5:9] = 1
    Image.fromarray(mask).save(first)
    with pytest.raises(RunConflictError, match=r"changed: .*pseudo_mask"):
        _refine(photos, out, "linear_head", "trainer.max_epochs=1", "val_split=null", f"pseudo_masks={other}",
                "ckpt_path=last")
    with pytest.raises(RunConflictError, match=r"changed: trainer\.max_epochs"):
        _refine(photos, out, "linear_head", "trainer.max_epochs=2", "val_split=null", "ckpt_path=last")
    before = (out / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    _refine(photos, out, "linear_head", "trainer.max_epochs=2", "val_split=null", "ckpt_path=last", "overwrite=true")
    assert (out / "checkpoints" / "last.ckpt").stat().st_mtime_ns != before
    assert json.loads((out / "run.json").read_text())["trainer.max_epochs"] == 2


def test_a_run_dir_left_without_outputs_is_taken_over(photos, tmp_path):
    """A run that failed before writing anything leaves only run.json: the corrected rerun proceeds."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"k": 99, "model": "something else"}))
    _refine(photos, out, "linear_head", "trainer.max_epochs=1", "val_split=null")
    assert json.loads((out / "run.json").read_text())["k"] == K


def test_train_refuses_k_above_the_mask_format(photos, tmp_path):
    from datus.refine import PseudoMaskError

    with pytest.raises(PseudoMaskError, match="k=300: K must be an integer from 2 to 255"):
        _refine(photos, tmp_path, "linear_head", "k=300")


def _three_val_images(photos, root, refused: bool = False):
    """``photos``' data with a third val photo (if ``refused``, as a 200x20 strip the resize refuses:
    aspect ratio 10 > 8) with its 3-class mask; the train split and pseudo masks as before."""
    import shutil

    shutil.copytree(photos / "data", root)
    item = DemoImages()[2]  # a third val photo (the split had two)
    image = item["image"].permute(1, 2, 0).numpy()[::4, ::4]
    if refused:
        image = np.resize(image, (20, 200, 3))
    Image.fromarray(np.ascontiguousarray(image)).save(root / "val" / "images" / f"{item['stem']}.png")
    Image.fromarray((image.mean(axis=2) // 86).astype(np.uint8)).save(root / "val" / "true_masks" / f"{item['stem']}.png")
    return ["dataset=folder", f"dataset.root={root}", "dataset.num_classes=3"]


def _evaluate(data, ckpt, cache, out):
    proc = subprocess.run(
        [sys.executable, "evaluate.py", *data, "dataset.split=val", f"ckpt={ckpt}", "logger=none", "postprocess=none",
         f"cache_dir={cache}", f"hydra.run.dir={out}"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), proc.stdout + proc.stderr


def test_a_val_image_without_features_counts_as_wrong_in_validation_and_evaluation(photos, tmp_path, caplog):
    """A val image the resize refuses has no feature map: validation used to leave it out (a higher
    val/miou that also chose the best checkpoint, exit 0) and evaluate.py ckpt= stopped on a bare
    KeyError. Both now count its labelled pixels as wrong, so they agree, and both say so."""
    data = _three_val_images(photos, tmp_path / "data", refused=True)
    overrides = [o for o in _overrides(photos, tmp_path, "linear_head", "trainer.max_epochs=1", "postprocess=none")
                 if not o.startswith("dataset.")]
    cfg = compose_config("train", [*overrides, *data[1:]], tmp_path)
    from datus.cli.train import refine_from_config

    with caplog.at_level("WARNING"):
        history = refine_from_config(cfg, loggers=[])
    assert "1 of 3 val images have no feature map" in caplog.text and "counts their labelled pixels as wrong" in caplog.text
    metrics, output = _evaluate(data, history[-1]["best_checkpoint"], tmp_path / "cache", tmp_path / "eval")
    assert metrics["images"] == 3 and metrics["coverage"] < 0.97  # the strip's pixels: labelled, predicted 255
    assert metrics["miou"] == pytest.approx(history[-1]["best_val_miou"], abs=1e-6)
    assert "every labelled pixel of theirs counts as wrong" in output


@pytest.mark.slow
def test_ddp_validation_scores_each_val_image_once(photos, tmp_path):
    """3 val images on 2 ranks: Lightning's sampler padded rank 1 with the first image, and the
    summed confusion scored it twice (val/miou and the best checkpoint off, exit 0). The DDP
    run's val/miou now equals evaluate.py's score of its checkpoint on one process. The feature
    cache starts cold: rank 1 used to wait on rank 0's cache lock while rank 0's predict loop waited
    for rank 1 (a hang)."""
    data = _three_val_images(photos, tmp_path / "data")
    base = [o for o in _overrides(photos, tmp_path, "linear_head", "trainer.max_epochs=1", "postprocess=none")
            if not o.startswith(("dataset.", "hydra.run.dir="))]
    proc = subprocess.run([sys.executable, "train.py", *[o for o in base if not o.startswith("dataset=")], *data,
                           "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                           f"hydra.run.dir={tmp_path / 'ddp'}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())["rounds"][-1]
    metrics, _ = _evaluate(data, entry["best_checkpoint"], tmp_path / "cache", tmp_path / "eval")
    assert metrics["miou"] == pytest.approx(entry["best_val_miou"], abs=1e-6)


def test_refining_a_split_never_picks_its_checkpoint_with_that_splits_ground_truth(photos, tmp_path, caplog):
    """``discover.py dataset.split=val refine=true`` trained on val's pseudo masks and validated on
    val's ground truth: the labels chose the checkpoint whose masks were then scored on them."""
    import shutil

    masks = tmp_path / "val_pseudo"
    shutil.copytree(photos / "data" / "val" / "true_masks", masks)  # any masks of val's images
    with caplog.at_level("WARNING"):
        history = _refine(photos, tmp_path, "linear_head", "train_split=val", "val_split=val", f"pseudo_masks={masks}",
                          "trainer.max_epochs=1", "postprocess=none")
    assert "val_split=val is the split being refined" in caplog.text
    assert "best_val_miou" not in history[-1] and history[-1]["best_checkpoint"].endswith("last.ckpt")
    assert not (tmp_path / "val_pictures").exists()


def test_evaluate_rebuilds_the_random_backbone_it_was_trained_on(photos, tmp_path):
    """weights=random: evaluate.py ckpt= without a cache rebuilds the backbone and recomputes the
    features; it gets the network train.py trained on, so the score equals the cached features' one
    (it used to be another random network: 6.4 vs 5.1 mIoU)."""
    history = _refine(photos, tmp_path, "linear_head", "trainer.max_epochs=1", "postprocess=none")
    data = ["dataset=folder", f"dataset.root={photos / 'data'}", "dataset.num_classes=3"]
    cached, _ = _evaluate(data, history[-1]["best_checkpoint"], tmp_path / "cache", tmp_path / "cached")
    rebuilt, _ = _evaluate(data, history[-1]["best_checkpoint"], "null", tmp_path / "rebuilt")
    assert rebuilt["miou"] == pytest.approx(cached["miou"], abs=1e-9)
    assert rebuilt["miou"] == pytest.approx(history[-1]["best_val_miou"], abs=1e-5)
