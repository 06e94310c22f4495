"""The peers in the harness: PriMaPs-EM (method=primaps) and STEGO's read-out (method=stego)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datus.backbones import build_backbone
from datus.cli.errors import user_error
from datus.features import FeatureSpec, feature_maps
from datus.masks import read_mask
from datus.primaps import (
    BACKGROUND,
    PriMaPsModule,
    class_focal_loss,
    majority_vote,
    median_filter,
    principal_masks,
    vote_kept,
)
from datus.transforms import ResizeForBackbone
from tests.conftest import PROJECT_ROOT, run_discover
from tests.test_quality import _labelled_folder

TINY = ["backbone=tiny_vit", "resize.size=64", "dataset=folder", "dataset.num_classes=3", "dataset.split=train", "k=3"]
PRIMAPS = ["method=primaps", "method.steps=30", "method.checkpoint_every=5",
           "method.batch_size=4", "method.init_points=2000"]
STEGO = ["method=stego", "feature_head=stego", "feature_head.steps=30", "method.probe.steps=100"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos (scikit-image's, shrunk) with 3-class masks from their brightness, as a folder dataset."""
    root = tmp_path_factory.mktemp("photos")
    _labelled_folder(root, "train", [f"p{i}" for i in range(6)])
    return root


# ------------------------------------------------------------------------------ proposals
def _two_groups(h=12, w=16, dim=32, noise=0.1, seed=0) -> tuple[torch.Tensor, np.ndarray]:
    """A feature map whose left columns lie around one direction and right columns around another."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    group = np.zeros((h, w), dtype=int)
    group[:, w // 2:] = 1
    features = np.where(group[..., None] == 0, a, b) + noise * rng.normal(size=(h, w, dim))
    return torch.from_numpy(features.reshape(h * w, dim)).float(), group.ravel()


def test_proposals_of_two_clear_groups_are_two_masks_covering_the_patches():
    features, group = _two_groups()
    masks = principal_masks(features, threshold=0.4, coverage=0.95)
    assert len(masks) == 2
    assert masks.any(dim=0).float().mean() >= 0.95
    assert not (masks[0] & masks[1]).any()  # a patch belongs to the first mask that took it
    for mask in masks:  # each mask is one group
        assert len(set(group[mask.numpy()])) == 1
    filtered = median_filter(masks, (12, 16))
    assert filtered.shape == (2, 12, 16) and torch.equal(filtered.flatten(1), masks)  # clean masks stay as they are
    assert torch.equal(principal_masks(features), principal_masks(features))  # the same features, the same masks


def test_median_filter_drops_a_lone_patch_and_fills_a_hole():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 1:5, 1:5] = True
    mask[0, 2, 2] = False  # a hole
    mask[0, 7, 7] = True  # a lone patch
    filtered = median_filter(mask.flatten(1), (9, 9))[0]
    assert filtered[2, 2] and not filtered[7, 7]


def test_majority_vote_gives_each_proposal_its_most_frequent_label():
    labels = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2], [2, 2, 2, 2]])
    proposals = torch.tensor([[0, 0, 0, 1], [0, 1, 1, 1], [BACKGROUND, BACKGROUND, 1, 1]], dtype=torch.uint8)
    voted = majority_vote(labels, proposals, k=3)
    # proposal 0 holds labels 0, 0, 1, 0 -> 0; proposal 1 holds 2, 1, 1, 2, 2, 2 -> 2; background stays
    assert voted.tolist() == [[0, 0, 0, 2], [0, 2, 2, 2], [BACKGROUND, BACKGROUND, 2, 2]]
    tie = majority_vote(torch.tensor([[1, 2]]), torch.tensor([[0, 0]], dtype=torch.uint8), k=3)
    assert tie.tolist() == [[1, 1]]  # ties: the smallest label


def test_vote_kept_measures_what_coarse_proposals_take_from_a_labelling():
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    fine = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, BACKGROUND]], dtype=torch.uint8)
    kept, inside, pixels = vote_kept(labels, fine, k=3)
    assert (kept, inside, pixels.tolist()) == (11, 11, [4, 4, 3])  # proposals within labels: nothing lost
    coarse = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.uint8)
    kept, inside, pixels = vote_kept(labels, coarse, k=3)
    # the first proposal spans labels 0 and 1 (4 pixels each): the vote keeps label 0's, label 1 loses every pixel
    assert (kept, inside, pixels.tolist()) == (8, 12, [8, 0, 4])


# ------------------------------------------------------------------------------ EM
def test_one_em_step_on_real_features_lowers_the_loss_and_the_teacher_moves_by_the_decay(photos):
    from datus.data import ImageFolder

    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit")
    dataset = ImageFolder(photos, "train", num_classes=3, transform=ResizeForBackbone(64, backbone.patch_size))
    batch = []
    for i in range(4):
        fmap = feature_maps(backbone, dataset[i]["image"][None], FeatureSpec(names=("tokens",)))[0]
        masks = median_filter(principal_masks(fmap.flatten(1).T), tuple(fmap.shape[1:]))
        from datus.primaps import proposal_map

        proposals = proposal_map(masks[masks.flatten(1).any(1)], (fmap.shape[1] * 2, fmap.shape[2] * 2))
        batch.append((fmap, torch.from_numpy(proposals)))
    rows = torch.cat([f.flatten(1).T for f, _ in batch]).numpy()
    from datus.labeling import KMeans

    centroids = KMeans(3, seed=0, spherical=True, center=False, overcluster=1).fit(rows).centroids
    module = PriMaPsModule(torch.from_numpy(centroids), decay=0.98, lr=5e-3, gamma=2.0, flip=False)
    targets = [module.pseudo_labels(f, p) for f, p in batch]
    assert all(set(t.unique().tolist()) <= {0, 1, 2, BACKGROUND} for t in targets)

    def loss() -> torch.Tensor:
        return torch.stack([class_focal_loss(module._logits(module.student, f, tuple(p.shape))[None], t[None], 2.0)
                            for (f, p), t in zip(batch, targets)]).mean()

    optimizer = torch.optim.Adam(module.student.parameters(), lr=5e-3)
    before = loss()
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    assert float(loss().detach()) < float(before.detach())
    # the teacher follows the student by the decay (after the warm-up: 1 - 1/(1 + e), at most 0.98)
    module.ema_updates.fill_(200)
    assert module.current_decay() == pytest.approx(0.98)
    teacher = [p.detach().clone() for p in module.teacher.parameters()]
    student = [p.detach().clone() for p in module.student.parameters()]
    module.update_teacher()
    for new, old, s in zip(module.teacher.parameters(), teacher, student):
        assert torch.allclose(new, 0.98 * old + 0.02 * s)
        assert not torch.equal(new, old)
    module.ema_updates.fill_(1)
    assert module.current_decay() == pytest.approx(0.5)  # warming up


# ------------------------------------------------------------------------------ end to end
def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "pseudo_masks").glob("*.png"))}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["primaps", "stego"])
def test_peer_methods_run_end_to_end_and_rerun_from_the_cache(tmp_path, photos, method):
    from datus.data import ImageFolder

    cache = tmp_path / "cache"
    extra = PRIMAPS if method == "primaps" else STEGO
    common = [*TINY, f"dataset.root={photos}", f"paths.cache_dir={cache}", *extra]
    for crf in ("none", "crf"):
        run_discover(tmp_path / crf, [*common, f"postprocess={crf}"])
    first = json.loads((tmp_path / "none" / "summary.json").read_text())
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert first["method"] == method and 0 <= metrics["miou"] <= 1 and metrics["coverage"] == 1.0
    dataset = ImageFolder(photos, "train", num_classes=3)
    for out in (tmp_path / "none", tmp_path / "crf"):
        for sample in dataset.samples:
            mask = read_mask(out / "pseudo_masks" / f"{sample.stem}.png")
            assert mask.shape == dataset.read_mask(sample).shape and mask.max() < 3
    assert _outputs(tmp_path / "none") != _outputs(tmp_path / "crf")  # the CRF changes the masks
    if method == "primaps":
        assert first["primaps"]["trained_this_run"] is True and first["primaps"]["proposals_per_image"] >= 1
        vote = first["primaps"]["start_vote"]
        assert 0 < vote["kept"] <= 1 and 1 <= vote["clusters_voted"] <= vote["k"] == 3
    run_discover(tmp_path / "again", [*common, "postprocess=none"])
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    if method == "primaps":
        assert again["primaps"]["trained_this_run"] is False and again["primaps"]["proposals_computed_this_run"] == 0
    else:
        assert again["feature_head"]["trained_this_run"] is False
    assert _outputs(tmp_path / "again") == _outputs(tmp_path / "none")


@pytest.mark.slow
def test_a_killed_primaps_fit_resumes_to_identical_outputs(tmp_path, photos):
    def command(out: Path, cache: Path) -> list[str]:
        return [sys.executable, "discover.py", *TINY, f"dataset.root={photos}", f"paths.cache_dir={cache}", *PRIMAPS,
                "method.steps=60", "logger=none", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]

    clean = subprocess.run(command(tmp_path / "clean", tmp_path / "c1"), cwd=PROJECT_ROOT, capture_output=True,
                           text=True, timeout=900)
    assert clean.returncode == 0, clean.stderr[-3000:]
    cache = tmp_path / "c2"
    proc = subprocess.Popen(command(tmp_path / "run", cache), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and not list(cache.glob("primaps/*/checkpoints/*.ckpt")):
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the fit finished before its first checkpoint")
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not list(cache.glob("primaps/*/primaps.pt"))  # killed mid-fit
    again = subprocess.run(command(tmp_path / "run", cache), cwd=PROJECT_ROOT, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _outputs(tmp_path / "run") == _outputs(tmp_path / "clean")


# ------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize("override,message", [
    ("method.threshold=0", r"method\.threshold=0.*must be in \(0, 1\]"),
    ("method.threshold=1.5", r"method\.threshold=1\.5.*must be in \(0, 1\]"),
    ("method.decay=1.0", r"method\.decay=1\.0.*must be in \[0, 1\)"),
    ("method.decay=-0.1", r"method\.decay=-0\.1.*must be in \[0, 1\)"),
    ("method.blocks=[-40]", r"has 2 blocks: block -40 does not exist"),
])
def test_primaps_settings_that_cannot_work_are_refused_before_any_image_is_read(tmp_path, photos, override, message):
    with pytest.raises(Exception) as info:
        run_discover(tmp_path / "run", [*TINY, f"dataset.root={photos}", f"paths.cache_dir={tmp_path / 'cache'}",
                                        "method=primaps", override])
    assert re.search(message, str(user_error(info.value))), str(info.value)
    assert not (tmp_path / "cache" / "features").exists()


def test_more_clusters_than_proposals_are_refused_naming_k(tmp_path, photos):
    with pytest.raises(ValueError, match=r"k=200: the 6 images have \d+ proposals in all, fewer than K"):
        run_discover(tmp_path / "run", [*TINY, "k=200", f"dataset.root={photos}", f"paths.cache_dir={tmp_path / 'c'}",
                                        *PRIMAPS, "method.proposal_crf=null"])


def test_stego_needs_the_head_and_refuses_a_head_of_another_backbone(tmp_path, photos):
    common = [*TINY, f"dataset.root={photos}", f"paths.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(Exception) as info:
        run_discover(tmp_path / "a", [*common, "method=stego"])
    assert "method=stego reads a feature head's codes: set feature_head=stego" in str(user_error(info.value))
    from datus.backbones.projected import ProjectionHead
    from datus.projection import save_head

    path = save_head(tmp_path / "other.pt", ProjectionHead(in_dim=384, out_dim=8), {"backbone": "dinov2_vits14"})
    with pytest.raises(Exception) as info:
        run_discover(tmp_path / "b", [*common, *STEGO, f"feature_head.checkpoint={path}"])
    assert re.search(r"head\.checkpoint=.*other\.pt was trained on dinov2_vits14 features, not tiny_vit's",
                     str(user_error(info.value)))
    assert not (tmp_path / "cache" / "features").exists()  # refused before any image was read


def test_the_focal_weighting_favours_rare_classes():
    logits = torch.tensor([[4.0, 0.0]]).repeat(8, 1).T.reshape(1, 2, 2, 4)  # class 0 predicted everywhere
    target = torch.zeros(1, 2, 4, dtype=torch.long)
    target[0, 0, 0] = 1
    plain = F.cross_entropy(logits, target, reduction="none").mean()
    focal = class_focal_loss(logits, target, gamma=2.0)
    assert float(focal) < float(plain)  # the confident, frequent class is down-weighted
    assert float(class_focal_loss(logits, target, gamma=0.0)) == pytest.approx(float(plain))
