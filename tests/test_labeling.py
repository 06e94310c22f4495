"""Pseudo-labelling: crops, k-means, pseudo masks on real images; the baseline; determinism."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from datus.backbones import build_backbone
from datus.data import CamVid, DemoImages
from datus.discovery import Affinity, Louvain, RunConflictError, SceneDecomposer, SegmentStore
from datus.labeling import KMeans, Labeler, segment_crops
from datus.masks import upsample_labels
from datus.methods import Datus, KMeansPatches
from datus.pipeline import Passes, RunDir, run_pipeline
from datus.transforms import ResizeForBackbone
from tests.conftest import perturbed_tiny_vit


def _trainer():
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)


def _run(out, backbone, dataset, method="datus", labeling=None, shard_index=0, shard_count=1, cache_dir=None,
         run_settings=None, overwrite=False, **kw):
    """run_pipeline with the objects discover.py's config builds (conf/method, conf/labeling)."""
    decomposer = SceneDecomposer(Affinity(kind="cosine", debias="center", knn=8), Louvain("igraph", resolution=1.0), min_patches=2)
    methods = {"datus": lambda: Datus(decomposer=decomposer), "kmeans_patches": KMeansPatches}
    return run_pipeline(methods[method](), labeler=Labeler(**labeling), backbone=backbone, dataset=dataset,
                        passes=Passes(_trainer, batch_size=2, num_workers=0, shard_size=256, cache_dir=cache_dir),
                        run_dir=RunDir(Path(out), settings=run_settings, overwrite=overwrite, num_pictures=8),
                        shard=(shard_index, shard_count), **kw)


def _pipeline(out, dataset=None, backbone=None, k=4, segment_features="mean", fill=True, weighted=False, **kw):
    torch.manual_seed(0)
    backbone = backbone or build_backbone("tiny_vit")
    dataset = dataset or DemoImages(transform=ResizeForBackbone(64, backbone.patch_size))
    labeling = dict(k=k, kmeans=partial(KMeans, seed=0), features=segment_features, fill=fill, weighted=weighted)
    return _run(out, backbone, dataset, labeling=labeling, **kw)


def _masks(folder):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "pseudo_masks").glob("*.png"))}


@pytest.mark.parametrize("features,fill", [("mean", True), ("mean", False), ("crop", False)])
def test_pseudo_masks_have_the_original_size_and_valid_labels(tmp_path, features, fill):
    summary = _pipeline(tmp_path, segment_features=features, fill=fill)
    data = DemoImages()
    masks = _masks(tmp_path)
    assert sorted(masks) == sorted(s.stem for s in data.samples)
    for i, sample in enumerate(data.samples):
        mask = masks[sample.stem]
        assert mask.dtype == np.uint8 and mask.shape == tuple(data[i]["image"].shape[-2:])
        values = set(np.unique(mask).tolist())
        assert values <= set(range(4)) | {255}
        colour = Image.open(tmp_path / "pseudo_masks_color" / f"{sample.stem}.png")
        assert colour.mode == "P" and np.array_equal(np.asarray(colour), mask)  # palette image = label image
    assert (tmp_path / "legend.png").is_file()
    assert sorted(p.stem for p in (tmp_path / "pseudo_masks_color").iterdir()) == sorted(masks)  # only the masks
    labelling = summary["labeling"]
    assert labelling["segment_features"] == features and labelling["k"] == 4
    assert sum(labelling["cluster_pixels"]) > 0
    if fill:
        assert labelling["coverage"] == 1.0 and labelling["coverage_without_fill"] < 1.0
    else:
        assert labelling["coverage"] < 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["labeling"]["k"] == 4


def test_labels_are_deterministic_for_a_fixed_seed(tmp_path):
    _pipeline(tmp_path / "a")
    _pipeline(tmp_path / "b")
    a, b = _masks(tmp_path / "a"), _masks(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[s], b[s]) for s in a)


def test_saved_centroids_relabel_an_image_to_its_label(tmp_path):
    _pipeline(tmp_path, fill=False)
    km = KMeans.load(tmp_path / "labeling" / "centroids.npz")
    with np.load(tmp_path / "labeling" / "assignments.npz") as z:
        offsets, labels, stems = z["segment_offsets"], z["labels"], z["stems"]
    records = {r.stem: r for r in SegmentStore(tmp_path / "segments")}
    for i, stem in enumerate(stems):
        dec = records[str(stem)].decomposition
        again = km.predict(dec.segment_features.astype(np.float32))
        expected = labels[offsets[i]:offsets[i + 1]]
        assert np.array_equal(np.where(dec.segment_valid, again, -1), expected)


def test_stages_run_alone_reuse_the_segments(tmp_path):
    _pipeline(tmp_path, stage="segments")
    assert not (tmp_path / "pseudo_masks").exists()
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "segments").glob("*.npz"))
    summary = _pipeline(tmp_path, stage="labels")
    assert summary["labeling"]["images"] == 5 and len(_masks(tmp_path)) == 5
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "segments").glob("*.npz")) == before


def test_a_k_sweep_reuses_the_cached_backbone_pass(tmp_path):
    cache, settings = tmp_path / "cache", {"backbone": "tiny", "graph": "knn8"}
    first = _pipeline(tmp_path / "k3", k=3, cache_dir=cache, settings=settings)
    assert first["computed_this_run"] == 5
    shards = sorted((cache / "discovery").glob("*/segments/shard-*.npz"))
    before = [p.stat().st_mtime_ns for p in shards]
    second = _pipeline(tmp_path / "k5", k=5, cache_dir=cache, settings=settings)
    assert second["computed_this_run"] == 0 and second["cache_entry"] == first["cache_entry"]
    assert [p.stat().st_mtime_ns for p in sorted((cache / "discovery").glob("*/segments/shard-*.npz"))] == before
    assert max(int(m.max()) for m in _masks(tmp_path / "k5").values()) == 4  # K=5 labels, not K=3's
    assert (tmp_path / "k5" / "segments").resolve() == (cache / "discovery").resolve() / Path(
        second["cache_entry"]).name / "segments"
    assert sorted(p.name for p in (tmp_path / "k5" / "pictures").glob("*.png")) == sorted(
        p.name for p in (tmp_path / "k3" / "pictures").glob("*.png"))
    # the patch-feature cache of the baseline likewise
    _pipeline(tmp_path / "p3", k=3, method="kmeans_patches", cache_dir=cache, settings=settings)
    again = _pipeline(tmp_path / "p5", k=5, method="kmeans_patches", cache_dir=cache, settings=settings)
    assert again["patch_features_computed_this_run"] == 0
    # other graph settings: a new cache entry, computed afresh
    other = _pipeline(tmp_path / "g", k=3, cache_dir=cache, settings={**settings, "graph": "knn5"})
    assert other["computed_this_run"] == 5 and other["cache_entry"] != first["cache_entry"]


def test_a_run_dir_is_not_overwritten_by_other_settings_unless_asked(tmp_path):
    _pipeline(tmp_path, k=3, run_settings={"k": 3})
    with pytest.raises(RunConflictError, match="changed: k.*overwrite=true"):
        _pipeline(tmp_path, k=5, run_settings={"k": 5})
    assert max(int(m.max()) for m in _masks(tmp_path).values()) == 2  # K=3's masks untouched
    _pipeline(tmp_path, k=5, run_settings={"k": 5}, overwrite=True)
    assert max(int(m.max()) for m in _masks(tmp_path).values()) == 4


def test_labels_refuse_an_unfinished_sharded_discovery(tmp_path):
    cache = tmp_path / "cache"
    _pipeline(tmp_path / "a", stage="segments", cache_dir=cache, shard_index=0, shard_count=2)
    with pytest.raises(ValueError, match="have no segments.*every shard.index"):
        _pipeline(tmp_path / "merge", stage="labels", cache_dir=cache)
    _pipeline(tmp_path / "b", stage="segments", cache_dir=cache, shard_index=1, shard_count=2)
    merged = _pipeline(tmp_path / "merge", stage="labels", cache_dir=cache)
    assert merged["labeling"]["images"] == 5 and len(_masks(tmp_path / "merge")) == 5
    with pytest.raises(ValueError, match="stage=segments"):
        _pipeline(tmp_path / "c", cache_dir=cache, shard_index=0, shard_count=2)


def test_kmeans_patches_baseline_writes_the_same_format(tmp_path):
    summary = _pipeline(tmp_path, method="kmeans_patches")
    masks = _masks(tmp_path)
    assert len(masks) == 5 and summary["labeling"]["coverage"] == 1.0
    assert all(set(np.unique(m).tolist()) <= set(range(4)) for m in masks.values())
    resized = DemoImages(transform=ResizeForBackbone(64, 8))
    patches = sum(item["image"].shape[1] * item["image"].shape[2] // 64 for item in resized)
    assert summary["labeling"]["patches_clustered"] == patches


def test_kmeans_uses_every_point_and_refuses_bad_k():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.05, size=(3000, 8)) for c in (-1, 0, 1)]).astype(np.float32)
    km = KMeans(3, seed=0, spherical=False, center=False, overcluster=1).fit(x)
    assert km.points_used == len(x)  # faiss would subsample to 256 * k = 768 by default
    labels = km.predict(x)
    assert len(set(labels[:3000])) == len(set(labels[3000:6000])) == len(set(labels[6000:])) == 1
    assert len(set(labels)) == 3
    with pytest.raises(ValueError, match="k=1"):
        KMeans(1)
    with pytest.raises(ValueError, match="needs at least 5 points"):
        KMeans(5).fit(x[:3])


def _directions(rng, spec):
    """Points scattered around unit directions: ``spec`` is [(direction, count)]; returns points, class ids."""
    points, ids = [], []
    for i, (direction, count) in enumerate(spec):
        d = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
        points.append(d + rng.normal(0, 0.05, size=(count, 3)))
        ids += [i] * count
    return np.concatenate(points).astype(np.float32), np.array(ids)


def test_overclustering_then_merging_keeps_a_small_class_that_kmeans_merges_away(tmp_path):
    """A big class with two modes (road in sun and shade), another big class and a small one far from both:
    k-means at K=3 splits the big class and gives the small one no cluster; 6 clusters merged into 3 by
    average linkage find the three classes."""
    rng = np.random.default_rng(0)
    x, truth = _directions(rng, [((1, 0.35, 0), 4000), ((1, -0.35, 0), 4000), ((0, 0, 1), 8000),
                                 ((-1, 0, 0.2), 300)])
    truth = np.where(truth == 1, 0, truth)  # the two modes are one class
    truth = np.where(truth > 1, truth - 1, truth)

    def pure(labels):  # every class has its own label and no label spans two classes
        return all(len(set(labels[truth == c])) == 1 for c in range(3)) and len(set(labels)) == 3

    plain = KMeans(3, seed=0, spherical=True, center=False, overcluster=1).fit(x)
    assert not pure(plain.predict(x))
    merged = KMeans(3, seed=0, spherical=True, center=False, overcluster=2).fit(x)
    labels = merged.predict(x)
    assert pure(labels)
    assert merged.centroids.shape == (3, 3) and merged.fine_centroids.shape == (6, 3)
    assert np.array_equal(merged.scores(x).argmax(1), labels)
    merged.save(tmp_path / "c.npz")
    assert np.array_equal(KMeans.load(tmp_path / "c.npz").predict(x), labels)
    with pytest.raises(ValueError, match="overcluster=0.5 must be a number >= 1"):
        KMeans(3, overcluster=0.5)


def test_kmeans_with_pca_and_whitening_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    km = KMeans(4, seed=0, pca_dim=8, whiten=True, center=False, overcluster=1).fit(x)
    km.save(tmp_path / "c.npz")
    assert np.array_equal(KMeans.load(tmp_path / "c.npz").predict(x), km.predict(x))


def test_segment_crops_pad_to_square_instead_of_cutting():
    image = torch.full((3, 32, 64), 200, dtype=torch.uint8)
    segments = np.zeros((4, 8), dtype=np.int32)
    segments[1, :] = 1  # a wide strip: 1 patch high, 8 patches wide
    crop = segment_crops(image, segments, [1], patch_size=8, size=64)[0]
    assert crop.shape == (3, 64, 64)
    # the whole width is segment (bright); above and below is square padding (black)
    assert crop[:, 32, 2:-2].min() > 0.7 and crop[:, 2, :].max() == 0 and crop[:, -3, :].max() == 0
    # pixels of the bounding box outside the segment are masked to the background
    corner = np.zeros((4, 8), dtype=np.int32)
    corner[3, :] = 1
    corner[:, 0] = 1  # an L: its bounding box is the whole 32x64 image, padded to 64x64
    crop = segment_crops(image, corner, [1], patch_size=8, size=64, background="black")[0]
    assert crop[:, 16 + 12, 12:60].max() < 0.05  # inside the box, outside the L: masked
    assert crop[:, 16 + 12, 1:6].min() > 0.7 and crop[:, 16 + 28, 2:-2].min() > 0.7  # the L itself
    grey = segment_crops(image, corner, [1], patch_size=8, size=64, background="mean")[0]
    assert torch.allclose(grey[:, 16 + 12, 30], torch.tensor([0.485, 0.456, 0.406]), atol=1e-3)


@pytest.mark.parametrize("all_segments", [False, True])
def test_crops_of_a_batch_are_embedded_together_as_each_alone(all_segments):
    """The segment embedder forwards the crops of all images of a batch together: each image gets
    what embedding its own crops alone gives, images without valid segments get zero rows."""
    from datus.discovery.store import ImageSegments
    from datus.labeling.embed import SegmentEmbedder

    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit")
    data = DemoImages(transform=ResizeForBackbone(64, 8))
    decomposer = SceneDecomposer(Affinity(kind="cosine", debias="center", knn=6), Louvain("igraph", resolution=1.0), min_patches=3)
    items, records = [data[i] for i in range(4)], {}
    for item in items:
        out = backbone(backbone.normalize(item["image"][None]))
        dec = decomposer(out.keys[0], out.grid, out.tokens[0])
        if item["index"] == 2:  # an image whose segments are all too small
            dec.segment_valid[:] = False
        records[item["index"]] = ImageSegments(item["stem"], item["index"], out.grid, (64, 64), (64, 64), dec)
    assert sum(r.decomposition.num_valid for r in records.values()) > 3
    embedder = SegmentEmbedder(backbone, records, patch_size=8, crop_size=32, all_segments=all_segments, chunk=3)
    together = embedder.predict_step({"items": items, "skipped": []}, 0)
    for (index, stem, features, _), item in zip(together, items):
        dec = records[index].decomposition
        alone = embedder.predict_step({"items": [item], "skipped": []}, 0)[0][2]
        assert stem == item["stem"] and features.shape == (dec.segment_valid.size, backbone.embed_dim)
        np.testing.assert_allclose(features, alone, atol=1e-5)
        used = np.arange(dec.segment_valid.size) if all_segments else np.flatnonzero(dec.segment_valid)
        assert np.allclose(np.linalg.norm(features[used], axis=1), 1, atol=1e-5)
        assert not np.delete(features, used, axis=0).any()
    nothing = [item for item in items if item["index"] == 2]
    if not all_segments:  # no valid segment in the batch: no forward, zero rows
        assert not embedder.predict_step({"items": nothing, "skipped": []}, 0)[0][2].any()


def test_upsampling_is_nearest_neighbour():
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    up = upsample_labels(labels, (5, 7))
    assert up.shape == (5, 7) and set(np.unique(up).tolist()) == {0, 1, 2, 255}
    assert up[0, 0] == 0 and up[-1, -1] == 255 and up[0, -1] == 1


@pytest.mark.slow
def test_pipeline_on_camvid_writes_metrics_with_the_packaged_dinov2(tmp_path, camvid_root, packaged_dinov2):
    data = CamVid(camvid_root, "val", transform=ResizeForBackbone(224, 14))
    subset_dir = tmp_path / "camvid"
    # the first 12 images, in CamVid layout, so the dataset class reads them as users would
    for name in ("val", "valannot"):
        (subset_dir / name).mkdir(parents=True)
    for sample in data.samples[:12]:
        (subset_dir / "val" / sample.image.name).symlink_to(sample.image)
        (subset_dir / "valannot" / sample.mask.name).symlink_to(sample.mask)
    small = CamVid(subset_dir, "val", transform=ResizeForBackbone(224, 14))
    summary = _pipeline(tmp_path / "out", dataset=small, backbone=packaged_dinov2, k=11)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["miou"] == summary["metrics"]["miou"] and 0.1 < metrics["miou"] < 1
    assert metrics["coverage"] == 1.0 and len(metrics["per_class_iou"]) == 11
    for name in ("confusion_matrix.png", "samples.png"):
        assert (tmp_path / "out" / name).is_file()


def test_a_huge_split_trains_kmeans_on_a_seeded_sample(tmp_path):
    """labeling.kmeans.max_points_per_centroid bounds labelling's memory; every segment is still labelled."""
    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit")
    dataset = DemoImages(transform=ResizeForBackbone(64, backbone.patch_size))
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        runs.append(_run(out, backbone, dataset, labeling=dict(
            k=3, kmeans=partial(KMeans, seed=0, max_points_per_centroid=4), fill=True, weighted=False)))
    labeling = runs[0]["labeling"]
    assert labeling["kmeans_points_used"] == 12 < labeling["segments_clustered"]
    assert labeling["coverage"] == 1.0 and len(_masks(tmp_path / "a")) == 5
    assert _masks(tmp_path / "a").keys() == _masks(tmp_path / "b").keys()
    assert all(np.array_equal(m, _masks(tmp_path / "b")[s]) for s, m in _masks(tmp_path / "a").items())
    assert not list((tmp_path / "a" / "labeling").glob(".*"))  # the scratch file is gone


def _folder_split(root: Path, stems: list[str]) -> None:
    """A folder dataset of real photos (scikit-image's, shrunk), one file per stem."""
    from datus.data.demo import DEMO_FILES, skimage_data_dir

    images = root / "all" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stem, name in zip(stems, DEMO_FILES * 3):
        with Image.open(skimage_data_dir() / name) as photo:
            photo.convert("RGB").resize((96, 72)).save(images / f"{stem}.png")


def _discover_folder(root: Path, out: Path, cache: Path, *extra: str) -> dict:
    from datus.cli import seed_everything
    from datus.cli.discover import pipeline_kwargs
    from tests.conftest import compose_config

    cfg = compose_config("discover", ["backbone=tiny_vit", "resize.size=64", "dataset=folder", f"dataset.root={root}",
                                      "dataset.split=all", "k=3", "logger=none", "trainer.enable_progress_bar=false",
                                      "graph.min_patches=2", f"cache_dir={cache}", "overwrite=true", *extra], out)
    seed_everything(cfg.seed)
    return run_pipeline(**pipeline_kwargs(cfg, out))


def _segments_by_stem(summary: dict, images: Path) -> dict:
    """The cached segments of the split's current files (matched by name and fingerprint)."""
    from datus.shards import file_fingerprint

    manifest = [(p.stem, file_fingerprint(p)) for p in sorted(images.glob("*.png"))]
    store = SegmentStore(Path(summary["cache_entry"]) / "segments", manifest=manifest)
    return {r.stem: (r.index, r.decomposition.segments.tobytes()) for r in store}


@pytest.mark.parametrize("edit", ["add_first", "delete", "replace", "replace_keeping_times", "copy_in_again"])
def test_the_cache_follows_the_files_of_the_split(tmp_path, edit):
    """An image added (sorting first), deleted or replaced under its name: only that image is (re)computed,
    every other one reused, and the masks equal those of a clean run on the edited split (the cache used
    to index by position: wrong masks, exit 0). The cache keys on the files' bytes: an image rewritten with
    its old size and times is recomputed (keyed on size and time it was served stale), and the split copied
    in again with new times (data staged to a node's disk) is reused whole (it was recomputed whole)."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    _folder_split(root, ["b1", "b2", "b3", "b4"])
    images = root / "all" / "images"
    if edit == "replace_keeping_times":  # room for a replacement of the same size (PNG ignores bytes after IEND)
        with open(images / "b4.png", "ab") as f:
            f.write(b"\0" * 4096)
    _discover_folder(root, tmp_path / "before", cache)
    if edit == "add_first":
        _folder_split(root, ["a0"])
    elif edit == "delete":
        (images / "b2.png").unlink()
    elif edit == "copy_in_again":
        for path in sorted(images.glob("*.png")):
            data = path.read_bytes()
            path.unlink()
            path.write_bytes(data)
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    else:
        stat = (images / "b4.png").stat()
        with Image.open(images / "b4.png") as photo:
            photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(images / "b4.png")
        if edit == "replace_keeping_times":
            data = (images / "b4.png").read_bytes()
            assert len(data) <= stat.st_size
            (images / "b4.png").write_bytes(data + b"\0" * (stat.st_size - len(data)))
            os.utime(images / "b4.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = _discover_folder(root, tmp_path / "after", cache)
    clean = _discover_folder(root, tmp_path / "clean", tmp_path / "clean_cache")
    assert after["computed_this_run"] == {"add_first": 1, "delete": 0, "copy_in_again": 0}.get(edit, 1)
    assert after["images"] == clean["images"] == {"add_first": 5, "delete": 3}.get(edit, 4)
    assert _segments_by_stem(after, images) == _segments_by_stem(clean, images)
    assert len(_segments_by_stem(after, images)) == after["images"]
    masks, clean_masks = _masks(tmp_path / "after"), _masks(tmp_path / "clean")
    assert masks.keys() == clean_masks.keys() and all(np.array_equal(m, clean_masks[s]) for s, m in masks.items())
    assert sorted(_masks(tmp_path / "after")) == sorted(p.stem for p in images.glob("*.png"))
    if edit == "delete":  # the same output dir: the deleted image's mask is gone too
        again = _discover_folder(root, tmp_path / "before", cache)
        assert again["computed_this_run"] == 0 and sorted(_masks(tmp_path / "before")) == ["b1", "b3", "b4"]


def test_an_image_called_legend_keeps_its_colour_mask(tmp_path):
    """The colours' legend was written into pseudo_masks_color/ as legend.png, over the colour mask
    of an image called legend (and an earlier run's legend there is now removed as stale)."""
    from datus.masks import save_masks

    (tmp_path / "pseudo_masks_color").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "pseudo_masks_color" / "legend.png")  # an earlier run's legend
    mask = np.arange(48, dtype=np.uint8).reshape(6, 8) % 3
    save_masks(tmp_path, [("legend", mask, (6, 8)), ("other", mask[::-1], (6, 8))], k=3)
    colour = Image.open(tmp_path / "pseudo_masks_color" / "legend.png")
    assert colour.mode == "P" and np.array_equal(np.asarray(colour), mask)
    assert sorted(p.name for p in (tmp_path / "pseudo_masks_color").iterdir()) == ["legend.png", "other.png"]
    assert Image.open(tmp_path / "legend.png").size[0] > 50  # the legend, beside the folders


def test_a_checkpoint_rewritten_in_place_is_not_served_from_the_cache(tmp_path, monkeypatch):
    """``backbone.weights=<file>``: a checkpoint rewritten under the same name (a DINO run's
    ``checkpoint.pth`` after another epoch) gives the new weights' masks, not the cached ones of the
    old file (the key held only the path string: old masks, exit 0); the same relative name used from
    two folders names two files."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    _folder_split(root, ["b1", "b2", "b3"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    def save_weights(path: Path, seed: int) -> None:
        torch.save(perturbed_tiny_vit(seed), path)

    save_weights(tmp_path / "a" / "ckpt.pth", 1)
    monkeypatch.chdir(tmp_path / "a")
    first = _discover_folder(root, tmp_path / "first", cache, "backbone.weights=ckpt.pth")
    save_weights(tmp_path / "a" / "ckpt.pth", 2)  # rewritten in place
    second = _discover_folder(root, tmp_path / "second", cache, "backbone.weights=ckpt.pth")
    clean = _discover_folder(root, tmp_path / "clean", tmp_path / "clean_cache", "backbone.weights=ckpt.pth")
    assert first["computed_this_run"] == second["computed_this_run"] == clean["computed_this_run"] == 3
    assert second["cache_entry"] != first["cache_entry"]
    masks, clean_masks, old_masks = _masks(tmp_path / "second"), _masks(tmp_path / "clean"), _masks(tmp_path / "first")
    assert all(np.array_equal(m, clean_masks[s]) for s, m in masks.items())
    assert not all(np.array_equal(m, old_masks[s]) for s, m in masks.items())  # the weights did change the masks
    again = _discover_folder(root, tmp_path / "again", cache, "backbone.weights=ckpt.pth")
    assert again["computed_this_run"] == 0 and again["cache_entry"] == second["cache_entry"]  # unchanged: reused
    (tmp_path / "b" / "ckpt.pth").write_bytes((tmp_path / "a" / "ckpt.pth").read_bytes())
    monkeypatch.chdir(tmp_path / "b")  # same relative name, another file (same bytes, another path and time)
    other = _discover_folder(root, tmp_path / "other", cache, "backbone.weights=ckpt.pth")
    assert other["computed_this_run"] == 3 and other["cache_entry"] != second["cache_entry"]


def test_a_damaged_shard_is_named_set_aside_and_recomputed(tmp_path, caplog):
    """A truncated shard (BadZipFile) is set aside, named in the log, and its images recomputed in the
    same run; a garbled one (bad CRC inside) fails naming the file, and the rerun recomputes it. The
    masks then equal a clean run's."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    _folder_split(root, ["b1", "b2", "b3"])
    first = _discover_folder(root, tmp_path / "run", cache)
    clean = _masks(tmp_path / "run")
    (shard,) = sorted((Path(first["cache_entry"]) / "segments").glob("shard-*.npz"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated: the zip directory is gone
    with caplog.at_level("WARNING"):
        again = _discover_folder(root, tmp_path / "run", cache)
    assert again["computed_this_run"] == 3 and shard.name in caplog.text and "damaged" in caplog.text
    assert all(np.array_equal(m, clean[s]) for s, m in _masks(tmp_path / "run").items())
    (shard,) = sorted((Path(first["cache_entry"]) / "segments").glob("shard-*.npz"))
    data = bytearray(shard.read_bytes())
    start = data.index(b"segment_features.npy") + 200  # inside that member's compressed-free data
    data[start:start + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    from datus.shards import DamagedShardError

    with pytest.raises(DamagedShardError, match=shard.name):
        _discover_folder(root, tmp_path / "run", cache)
    third = _discover_folder(root, tmp_path / "run", cache)
    assert third["computed_this_run"] == 3
    assert all(np.array_equal(m, clean[s]) for s, m in _masks(tmp_path / "run").items())


def test_damaged_or_orphan_run_records_do_not_block_a_rerun(tmp_path):
    """A garbled run.json names itself and yields to overwrite=true; a run.json left by a run that failed
    before writing anything is taken over by the corrected rerun."""
    from datus.runs import RunConflictError

    root, cache = tmp_path / "data", tmp_path / "cache"
    _folder_split(root, ["b1", "b2"])
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"k": 7, "labeling"')  # a failed run's record, nothing else
    _discover_folder(root, out, cache)  # taken over
    (out / "run.json").write_text("\x00garbled")
    from datus.cli.discover import pipeline_kwargs
    from tests.conftest import compose_config

    cfg = compose_config("discover", ["backbone=tiny_vit", "resize.size=64", "dataset=folder", f"dataset.root={root}",
                                      "dataset.split=all", "k=3", "logger=none", "graph.min_patches=2",
                                      f"cache_dir={cache}"], out)
    with pytest.raises(RunConflictError, match=r"run\.json is damaged"):
        run_pipeline(**pipeline_kwargs(cfg, out))
    _discover_folder(root, out, cache)  # overwrite=true replaces it
    assert json.loads((out / "run.json").read_text())["k"] == 3
