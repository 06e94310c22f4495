"""Scene decomposition: graphs, communities, regions, the store and resumable runs."""

from __future__ import annotations

import json
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy import ndimage

from datus.backbones import build_backbone
from datus.data import DemoImages, ImageFolder
from datus.discovery import (
    Affinity,
    Louvain,
    PatchGraph,
    RunConflictError,
    SceneDecomposer,
    SegmentStore,
    connected_regions,
    density,
    list_community_backends,
    modularity,
    run_discovery,
    valid_regions,
)
from datus.discovery.community import DENSE_BUILD
from datus.transforms import ResizeForBackbone
from tests.conftest import PROJECT_ROOT


def _patch_colours(index: int, grid: int = 16) -> tuple[torch.Tensor, tuple[int, int]]:
    """Real features without a model: mean RGB + position of each patch of a demo photo."""
    image = DemoImages(transform=ResizeForBackbone(grid * 8, 8, mode="square"))[index]["image"].float() / 255
    colours = torch.nn.functional.avg_pool2d(image[None], 8)[0]  # (3, g, g)
    ys, xs = torch.meshgrid(torch.linspace(0, 0.3, grid), torch.linspace(0, 0.3, grid), indexing="ij")
    feats = torch.cat([colours, ys[None], xs[None]]).flatten(1).T
    return feats, (grid, grid)


# --- affinity -----------------------------------------------------------------------------


def _naive_affinity(x: np.ndarray, aff: Affinity) -> np.ndarray:
    """The authors' way: a Python double loop over patch pairs (reference only)."""
    n = len(x)
    if aff.debias == "center":
        x = x - x.mean(0)
    if aff.l2_normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if aff.kind == "binary":
                a[i, j] = float(x[i] @ x[j] > 0)
            else:
                a[i, j] = max(0.0, x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]))
            if aff.threshold is not None and a[i, j] < aff.threshold:
                a[i, j] = 0.0
    if aff.knn is not None:
        keep = np.zeros((n, n), dtype=bool)
        for i in range(n):
            for j in np.argsort(-a[i], kind="stable")[: aff.knn]:
                keep[i, j] = keep[j, i] = True
        a = np.where(keep, a, 0.0)
    return a


@pytest.mark.parametrize("kind,debias,knn,threshold,l2", [
    ("binary", "none", None, None, False),
    ("binary", "center", None, None, True),
    ("cosine", "none", None, None, False),
    ("cosine", "center", 5, None, False),
    ("cosine", "center", None, 0.3, False),
    ("cosine", "none", 4, 0.2, False),
])
def test_vectorised_affinity_equals_the_naive_double_loop(kind, debias, knn, threshold, l2):
    feats, _ = _patch_colours(0, grid=6)
    aff = Affinity(kind=kind, debias=debias, knn=knn, threshold=threshold, l2_normalize=l2)
    expected = _naive_affinity(feats.double().numpy(), aff)
    dense = aff(feats).double().numpy()
    assert np.allclose(dense, expected, atol=1e-5)
    assert np.allclose(aff.graph(feats).dense(), expected, atol=1e-5)
    assert np.allclose(dense, dense.T) and np.all(np.diag(dense) == 0)


def test_remove_key_bias_subtracts_the_bias_and_needs_it():
    feats, _ = _patch_colours(1, grid=4)
    bias = torch.full((feats.shape[1],), 5.0)
    raw = Affinity(kind="binary", debias="none", knn=None)(feats + bias)
    fixed = Affinity(kind="binary", debias="remove_key_bias", knn=None)(feats + bias, key_bias=bias)
    assert density(raw) == 1.0  # the degenerate complete graph of biased keys
    assert torch.equal(fixed, Affinity(kind="binary", debias="none", knn=None)(feats))
    with pytest.raises(ValueError, match="needs a ViT's key bias"):
        Affinity(kind="binary", debias="remove_key_bias", knn=None)(feats)


def test_bad_affinity_settings_name_the_setting():
    with pytest.raises(ValueError, match="graph.affinity.kind='dot'"):
        Affinity(kind="dot", knn=None)
    with pytest.raises(ValueError, match="graph.affinity.knn=0"):
        Affinity(knn=0)


# --- communities --------------------------------------------------------------------------


def test_modularity_equals_networkx():
    feats, _ = _patch_colours(2, grid=8)
    graph = Affinity(kind="cosine", debias="center", knn=6).graph(feats)
    labels = Louvain("igraph", resolution=1.0)(graph)
    g = nx.from_numpy_array(graph.dense())
    parts = [set(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for gamma in (0.5, 1.0, 2.0):
        assert modularity(graph, labels, gamma) == pytest.approx(
            nx.community.modularity(g, parts, resolution=gamma), abs=1e-9)


@pytest.mark.parametrize("index", [0, 1, 3])
def test_fast_backends_match_the_reference_modularity_on_real_patch_graphs(index):
    feats, _ = _patch_colours(index, grid=16)
    graph = Affinity(kind="cosine", debias="center", knn=10).graph(feats)
    reference = modularity(graph, Louvain("python-louvain", resolution=1.0, seed=0)(graph))
    for backend in ("igraph", "leiden"):
        q = modularity(graph, Louvain(backend, resolution=1.0, seed=0)(graph))
        assert q >= 0.98 * reference, (backend, q, reference)


@pytest.mark.parametrize("backend", list_community_backends())
def test_louvain_is_seeded_and_deterministic(backend):
    feats, _ = _patch_colours(4, grid=12)
    graph = Affinity(kind="cosine", debias="center", knn=8).graph(feats)
    first = Louvain(backend, resolution=1.0, seed=3)(graph)
    assert np.array_equal(first, Louvain(backend, resolution=1.0, seed=3)(graph))
    assert first.min() == 0 and set(np.unique(first)) == set(range(first.max() + 1))


def test_higher_resolution_gives_more_communities():
    feats, _ = _patch_colours(0, grid=16)
    graph = Affinity(kind="cosine", debias="center", knn=10).graph(feats)
    counts = [Louvain("igraph", resolution=r)(graph).max() + 1 for r in (0.2, 1.0, 5.0)]
    assert counts[0] <= counts[1] <= counts[2] and counts[0] < counts[2]


@pytest.mark.parametrize("backend", ["igraph", "leiden"])
@pytest.mark.parametrize("kind", ["binary", "cosine"])
def test_dense_graphs_built_from_their_matrix_give_the_edge_lists_communities(backend, kind):
    """Dense graphs go to igraph as one matrix (fast), sparse ones as edge lists: same communities."""
    feats, _ = _patch_colours(1, grid=16)
    graph = Affinity(kind=kind, debias="center", knn=None)(feats)
    dense = PatchGraph.from_dense(graph)
    assert dense.matrix is not None and dense.density > DENSE_BUILD and dense.binary == (kind == "binary")
    edge_list = PatchGraph(dense.num_nodes, dense.edges, dense.weights)
    for seed in (0, 1):
        assert np.array_equal(Louvain(backend, resolution=1.0, seed=seed)(dense), Louvain(backend, resolution=1.0, seed=seed)(edge_list))


def test_graph_without_edges_gives_singletons():
    labels = Louvain("igraph", resolution=1.0)(PatchGraph(4, np.zeros((0, 2), dtype=np.int64), np.zeros(0)))
    assert labels.tolist() == [0, 1, 2, 3]


# --- regions ------------------------------------------------------------------------------


@pytest.mark.parametrize("connectivity", [4, 8])
def test_regions_match_scipy_labelling_of_each_community(connectivity):
    rng = np.random.default_rng(0)
    communities = ndimage.zoom(rng.integers(0, 4, size=(6, 7)), 3, order=0)
    communities[rng.random(communities.shape) < 0.05] = 4  # speckle: many tiny regions
    regions, owner = connected_regions(communities, connectivity)
    structure = np.ones((3, 3)) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    expected_total = 0
    for c in np.unique(communities):
        labelled, count = ndimage.label(communities == c, structure=structure)
        expected_total += count
        inside = communities == c
        # the same partition of the community's patches, up to renaming
        pairs = set(zip(labelled[inside].tolist(), regions[inside].tolist()))
        assert len(pairs) == count == len({r for _, r in pairs})
        assert set(owner[regions[inside]]) == {c}
    assert regions.max() + 1 == expected_total == len(owner)


def test_diagonal_neighbours_join_only_with_8_connectivity():
    communities = np.array([[1, 0], [0, 1]])
    assert connected_regions(communities, 8)[0].max() + 1 == 2
    assert connected_regions(communities, 4)[0].max() + 1 == 4


def test_regions_of_at_most_min_patches_are_invalid():
    communities = np.zeros((4, 8), dtype=int)
    communities[:, 5:] = 1  # a 12-patch region
    communities[0, :5] = 2  # a 5-patch region: invalid with min_patches=5
    regions, owner = connected_regions(communities)
    valid = valid_regions(regions, 5)
    sizes = np.bincount(regions.ravel())
    assert valid.tolist() == (sizes > 5).tolist() and sorted(sizes.tolist()) == [5, 12, 15]
    with pytest.raises(ValueError, match="graph.min_patches=-1"):
        valid_regions(regions, -1)


# --- decomposition on real images -------------------------------------------------------


def _tiny_decomposer(**graph) -> SceneDecomposer:
    return SceneDecomposer(Affinity(kind="cosine", debias="center", knn=8), Louvain("igraph", resolution=1.0), **graph)


def test_decomposition_of_a_real_photo_is_consistent():
    feats, grid = _patch_colours(1, grid=16)
    dec = _tiny_decomposer(feature="tokens", min_patches=5)(feats, grid)
    assert dec.communities.shape == dec.segments.shape == grid
    assert dec.segment_valid.size == dec.segments.max() + 1 == dec.segment_features.shape[0]
    assert np.array_equal(dec.segment_sizes, np.bincount(dec.segments.ravel()))
    assert np.array_equal(dec.segment_valid, dec.segment_sizes > 5)
    # a segment lies inside one community
    for s in range(dec.segment_valid.size):
        assert set(dec.communities[dec.segments == s].tolist()) == {dec.segment_community[s]}
    assert 2 <= dec.communities.max() + 1 < 64 and dec.num_valid >= 2


def test_unknown_feature_is_an_error():
    with pytest.raises(ValueError, match="graph.feature='cls'"):
        _tiny_decomposer(feature="cls")


# --- runs: store, resume, bad input ---------------------------------------------------


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


def _run(out, dataset=None, settings=None, trainer=None, num_workers=0, num_pictures=8, **kw):
    torch.manual_seed(0)  # the same random tiny backbone in every run
    backbone = build_backbone("tiny_vit")
    dataset = dataset or DemoImages(transform=ResizeForBackbone(64, 8))
    return run_discovery(backbone, decomposer=_tiny_decomposer(), dataset=dataset, trainer=trainer or _trainer(), out_dir=out,
                         settings=settings or {"test": 1}, batch_size=2, shard_size=2, num_workers=num_workers,
                         num_pictures=num_pictures, **kw)


def _records(folder):
    return {r.stem: r for r in SegmentStore(folder / "segments")}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for stem in a:
        x, y = a[stem].decomposition, b[stem].decomposition
        for name in ("communities", "segments", "segment_valid", "segment_community", "segment_features"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), (stem, name)


class _Crash(pl.Callback):
    """Kill the predict loop after ``after`` batches, as a crash would."""

    def __init__(self, after: int) -> None:
        self.after = after

    def on_predict_batch_end(self, trainer, *args, **kwargs):
        if trainer.predict_loop.batch_progress.current.completed >= self.after:
            raise _SimulatedCrash("simulated crash")


class _SimulatedCrash(RuntimeError):
    pass


def test_run_writes_shards_summary_and_pictures(tmp_path):
    summary = _run(tmp_path, num_pictures=2)
    assert summary["images"] == 5 and summary["valid_segments"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["images"] == 5
    assert len(SegmentStore(tmp_path / "segments").shards()) == 3  # shard_size=2
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["astronaut.png", "chelsea.png"]
    assert set(summary["ms_per_image"]) == {"backbone_ms", "affinity_ms", "louvain_ms", "segments_ms"}
    record = next(iter(SegmentStore(tmp_path / "segments")))
    assert record.input_size == (64, 64) and record.orig_size == (512, 512) and record.grid == (8, 8)


def test_resume_after_a_crash_gives_identical_outputs(tmp_path):
    clean = tmp_path / "clean"
    _run(clean)
    crashed = tmp_path / "crashed"
    with pytest.raises(_SimulatedCrash):
        _run(crashed, trainer=_trainer(callbacks=[_Crash(after=2)]))
    partial = _records(crashed)
    assert len(partial) == 4  # finished images are flushed on the way out; nothing else

    assert not list((crashed / "segments").glob("*.tmp*")) and not list((crashed / "segments").glob(".*"))
    summary = _run(crashed)
    assert summary["computed_this_run"] == 5 - len(partial)
    _assert_same(_records(clean), _records(crashed))
    assert _run(crashed)["computed_this_run"] == 0  # nothing left to do


class _FailsOn(SceneDecomposer):
    """A decomposer that fails on one image (it runs in discovery's background thread)."""

    def __init__(self, stem_index: int) -> None:
        super().__init__(Affinity(kind="cosine", debias="center", knn=8), Louvain("igraph", resolution=1.0))
        self.calls, self.fail_at = 0, stem_index

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise _SimulatedCrash("decomposition failed")
        return super().__call__(*args, **kwargs)


def test_a_failure_in_the_background_decomposition_stops_the_run_and_keeps_earlier_images(tmp_path):
    """Decompositions overlap the next forward in a worker thread: an error there still stops the
    run with that error, and the images decomposed before it are on disk for the rerun."""
    torch.manual_seed(0)
    common = dict(dataset=DemoImages(transform=ResizeForBackbone(64, 8)), trainer=_trainer(), out_dir=tmp_path,
                  settings={"test": 1}, batch_size=1, shard_size=1, num_workers=0, num_pictures=0)
    backbone = build_backbone("tiny_vit")
    with pytest.raises(_SimulatedCrash, match="decomposition failed"):
        run_discovery(backbone, decomposer=_FailsOn(4), **common)
    stems = [sample.stem for sample in common["dataset"].samples]
    kept = set(_records(tmp_path))
    # every image before the failed one; the one after it too if its decomposition finished in time
    assert set(stems[:3]) <= kept and stems[3] not in kept and len(kept) in (3, 4)
    common["trainer"] = _trainer()
    summary = run_discovery(backbone, decomposer=_tiny_decomposer(), **common)
    assert summary["computed_this_run"] == len(stems) - len(kept)
    clean = tmp_path / "clean"
    _run(clean)
    _assert_same(_records(clean), _records(tmp_path))


def test_other_settings_in_the_same_output_dir_are_refused_unless_overwrite(tmp_path):
    _run(tmp_path, settings={"graph": 1})
    with pytest.raises(RunConflictError, match="changed: graph.*overwrite=true"):
        _run(tmp_path, settings={"graph": 2})
    assert _run(tmp_path, settings={"graph": 2}, overwrite=True)["computed_this_run"] == 5


def test_unreadable_and_too_small_images_are_skipped_and_named(tmp_path):
    from PIL import Image

    images = tmp_path / "data" / "train" / "images"
    images.mkdir(parents=True)
    photo = DemoImages()[1]["image"].permute(1, 2, 0).numpy()
    Image.fromarray(photo).save(images / "good one.png")
    Image.fromarray(photo).save(images / "café.jpg")
    (images / "broken.png").write_bytes(b"not an image at all")
    Image.fromarray(photo[:5, :5]).save(images / "tiny.png")
    dataset = ImageFolder(tmp_path / "data", "train", transform=ResizeForBackbone(64, 8))
    summary = _run(tmp_path / "out", dataset=dataset)
    assert sorted(s["stem"] for s in summary["skipped"]) == ["broken", "tiny"]
    reasons = {s["stem"]: s["error"] for s in summary["skipped"]}
    assert "broken.png" in reasons["broken"] and "smaller than one patch" in reasons["tiny"]
    assert sorted(_records(tmp_path / "out")) == ["café", "good one"]


def test_invalid_config_fails_before_loading_the_backbone(tmp_path):
    for override, message in [
        ("graph.min_patches=-1", "graph.min_patches=-1"),
        ("backbone.name=vit_huge", "backbone.name='vit_huge'"),
        ("resize.mode=square", None),
    ]:
        args = ["backbone=tiny_vit", "logger=none", f"hydra.run.dir={tmp_path / 'x'}", override]
        if override == "resize.mode=square":
            args += ["resize.size=70"]
            message = "not a multiple of the patch size 8"
        proc = subprocess.run([sys.executable, "discover.py", *args], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and message in proc.stderr, (override, proc.stderr[-2000:])


# --- the packaged DINOv2 on real images ---------------------------------------------------


@pytest.mark.slow
def test_paper_graph_is_degenerate_on_dinov2_keys_and_the_named_fix_repairs_it(packaged_dinov2):
    item = DemoImages(transform=ResizeForBackbone(224, 14, mode="square"))[0]
    out = packaged_dinov2(packaged_dinov2.normalize(item["image"][None]))
    keys = out.keys[0]
    assert density(Affinity(kind="binary", debias="none", knn=None)(keys)) == 1.0
    fixed = Affinity(kind="binary", debias="remove_key_bias", knn=None)(keys, key_bias=packaged_dinov2.key_bias())
    assert 0.2 < density(fixed) < 0.9
    assert 0.2 < density(Affinity(kind="binary", debias="center", knn=None)(keys)) < 0.9


@pytest.mark.slow
def test_backends_agree_in_modularity_on_dinov2_patch_graphs(packaged_dinov2, camvid_root):
    from datus.data import CamVid

    data = CamVid(camvid_root, "val", transform=ResizeForBackbone(448, 14))
    for index in (0, 40, 80):
        out = packaged_dinov2(packaged_dinov2.normalize(data[index]["image"][None]))
        graph = Affinity(kind="cosine", debias="center", knn=10).graph(out.keys[0])
        reference = modularity(graph, Louvain("python-louvain")(graph))
        assert modularity(graph, Louvain("igraph", resolution=1.0)(graph)) >= 0.98 * reference


@pytest.mark.slow
def test_paper_graph_communities_as_good_as_the_authors_library(packaged_dinov2, camvid_root):
    """experiment=datus_paper's dense binary 224 px graphs: igraph (its default backend) reaches
    python-louvain's modularity (the authors' library) within 1%, and builds them from the matrix."""
    from datus.data import CamVid

    data = CamVid(camvid_root, "val", transform=ResizeForBackbone(224, 14, mode="square"))
    affinity = Affinity(kind="binary", debias="remove_key_bias", knn=None)
    ours, reference = [], []
    for index in (0, 30, 60, 90):
        out = packaged_dinov2(packaged_dinov2.normalize(data[index]["image"][None]))
        graph = affinity.graph(out.keys[0], packaged_dinov2.key_bias())
        assert graph.num_nodes == 256 and graph.density > DENSE_BUILD and graph.binary
        ours.append(modularity(graph, Louvain("igraph", resolution=1.0)(graph)))
        reference.append(modularity(graph, Louvain("python-louvain")(graph)))
    assert np.mean(ours) >= 0.99 * np.mean(reference), (ours, reference)
