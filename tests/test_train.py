"""train.py with the image DeepLabV3 (model=deeplabv3_mobilenet): fast dev run on real photos, exact resume,
the ignore index, evaluate.py ckpt=. The heads on frozen features: tests/test_heads.py."""

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
from PIL import Image

from datus.data import DemoImages
from datus.refine import RefineModule
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos as a user's folder dataset (train and val, 3-class masks) + pseudo masks of train."""
    root = tmp_path_factory.mktemp("refine")
    pseudo = root / "pseudo_masks"
    pseudo.mkdir()
    for split, items in (("train", list(DemoImages())[:4]), ("val", list(DemoImages())[3:])):
        (root / "data" / split / "images").mkdir(parents=True)
        (root / "data" / split / "true_masks").mkdir()
        for item in items:
            image = item["image"].permute(1, 2, 0).numpy()[::4, ::4]  # small: quick on CPU
            Image.fromarray(np.ascontiguousarray(image)).save(root / "data" / split / "images" / f"{item['stem']}.png")
            truth = (image.mean(axis=2) // 86).astype(np.uint8)
            Image.fromarray(truth).save(root / "data" / split / "true_masks" / f"{item['stem']}.png")
            if split == "train":  # pseudo masks: 4 clusters of colour, a border left unlabelled
                pseudo_mask = (image[..., 0] > image[..., 2]).astype(np.uint8) * 2 + (image.mean(axis=2) > 128)
                pseudo_mask[:3] = 255
                Image.fromarray(pseudo_mask.astype(np.uint8)).save(pseudo / f"{item['stem']}.png")
    return root


def _train(photos, out, *args, ok=True):
    proc = subprocess.run(_command(photos, out, *args), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fast_dev_run_trains_validates_and_predicts(photos, tmp_path):
    _train(photos, tmp_path, "debug=fdr", "predict=true")
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["k"] == 4
    entry = summary["rounds"][0]
    assert 0 <= entry["val_miou"] <= 1 and 0 <= entry["val_pixel_accuracy"] <= 1
    refined = sorted((tmp_path / "refined" / "pseudo_masks").glob("*.png"))
    assert len(refined) == 4
    sizes = {p.stem: Image.open(photos / "data" / "train" / "images" / f"{p.stem}.png").size for p in refined}
    for path in refined:
        mask = np.asarray(Image.open(path))
        assert mask.shape[::-1] == sizes[path.stem] and mask.max() < 4


def _command(photos, out, *args):
    return [sys.executable, "train.py", "dataset=folder", f"dataset.root={photos / 'data'}", "dataset.num_classes=3",
            f"pseudo_masks={photos / 'pseudo_masks'}", "logger=none", "trainer.enable_progress_bar=false",
            "model=deeplabv3_mobilenet", "postprocess=none", "model.data.crop_size=64", "model.data.eval_short_side=64",
            "model.data.batch_size=2", f"hydra.run.dir={out}", *args]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_resumes_exactly_from_its_last_checkpoint(photos, tmp_path, sig):
    """Preemption after the first epoch's checkpoint; ckpt_path=last ends with the uninterrupted run's weights."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_command(photos, tmp_path, "trainer.max_epochs=3"), cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not last.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # into the second epoch
    os.kill(proc.pid, sig)
    output, _ = proc.communicate(timeout=300)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "rerun with ckpt_path=last to resume" in output, output[-3000:]
    first = torch.load(last, weights_only=True)
    if first["epoch"] >= 2:
        pytest.skip("the run finished before it could be killed")
    temporaries = lambda: [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # noqa: E731
    if sig == signal.SIGTERM:
        assert not temporaries()
    _train(photos, tmp_path, "trainer.max_epochs=3", "ckpt_path=last")
    assert not temporaries()  # a SIGKILLed writer's temporary file is removed by the rerun
    final = torch.load(last, weights_only=True)
    _train(photos, tmp_path / "clean", "trainer.max_epochs=3")  # the same run, never interrupted
    clean = torch.load(tmp_path / "clean" / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] < final["global_step"]
    assert (final["epoch"], final["global_step"]) == (clean["epoch"], clean["global_step"])
    adam = lambda c: {float(s["step"]) for s in c["optimizer_states"][0]["state"].values()}  # noqa: E731
    assert adam(final) == adam(clean) == {float(clean["global_step"])}  # AdamW's moments carried over
    assert final["lr_schedulers"][0]["last_epoch"] == clean["lr_schedulers"][0]["last_epoch"]  # the schedule too
    for name, weight in clean["state_dict"].items():  # same crops, flips and batch order: same weights
        assert torch.equal(final["state_dict"][name], weight), name
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_a_killed_two_process_ddp_run_resumes_exactly(photos, tmp_path):
    """Both DDP ranks (2 CPU processes, gloo) killed at once after the first epoch's checkpoint, as a
    preempted node is: the resumed run ends with the uninterrupted run's weights. The checkpoint
    holds each rank's random state (with one seed on every rank they happen to be equal here)."""
    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=3")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_command(photos, tmp_path / "run", *ddp), cwd=PROJECT_ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not last.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # every rank at once
    proc.wait(timeout=60)
    first = torch.load(last, weights_only=True)
    if first["epoch"] >= 2:
        pytest.skip("the run finished before it could be killed")
    assert len(first["callbacks"]["RandomStateCheckpoint"]["ranks"]) == 2  # both ranks' random states
    _train(photos, tmp_path / "run", *ddp, "ckpt_path=last")
    _train(photos, tmp_path / "clean", *ddp)
    final = torch.load(last, weights_only=True)
    clean = torch.load(tmp_path / "clean" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (clean["epoch"], clean["global_step"])
    for name, weight in clean["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), name


def test_missing_pseudo_masks_are_named(photos, tmp_path):
    (photos / "pseudo_masks" / "coffee.png").rename(photos / "coffee.png.bak")
    try:
        proc = _train(photos, tmp_path, "debug=fdr", ok=False)
    finally:
        (photos / "coffee.png.bak").rename(photos / "pseudo_masks" / "coffee.png")
    assert proc.returncode != 0 and "have no pseudo mask" in proc.stderr and "coffee" in proc.stderr


def test_the_ignore_index_really_is_ignored():
    torch.manual_seed(0)
    module = RefineModule("deeplabv3_mobilenet_v3_large", num_clusters=3)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    masks = torch.randint(0, 3, (2, 8, 8))
    masks[:, :4] = 255
    loss = module.loss(logits, masks)
    keep = masks != 255
    manual = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    assert torch.allclose(loss, manual)
    loss.backward()
    assert logits.grad[:, :, :4].abs().max() == 0 and logits.grad[:, :, 4:].abs().max() > 0
    empty = module.loss(logits, torch.full_like(masks, 255))
    assert empty.item() == 0.0 and torch.isfinite(empty)


def test_evaluate_a_refined_checkpoint(photos, tmp_path):
    _train(photos, tmp_path / "train", "trainer.max_epochs=1")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "dataset=folder", f"dataset.root={photos / 'data'}", "dataset.split=val",
         "dataset.num_classes=3", f"ckpt={tmp_path / 'train' / 'checkpoints' / 'last.ckpt'}", "logger=none",
         f"hydra.run.dir={out}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_clusters"] == 4 and metrics["coverage"] == 1.0 and metrics["images"] == 2
    assert len(list((out / "pseudo_masks").glob("*.png"))) == 2
    proc = subprocess.run(  # k= cannot change a checkpoint's K: refused, not ignored
        [sys.executable, "evaluate.py", "dataset=folder", f"dataset.root={photos / 'data'}", "dataset.split=val",
         "dataset.num_classes=3", f"ckpt={tmp_path / 'train' / 'checkpoints' / 'last.ckpt'}", "logger=none", "k=5",
         f"hydra.run.dir={tmp_path / 'eval_k5'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1 and "error: k=5 but ckpt=" in proc.stderr and "predicts K=4" in proc.stderr, proc.stderr


def test_a_checkpoint_is_replaced_atomically_or_not_at_all(tmp_path):
    """A save that fails halfway (here: an unpicklable entry after the weights) keeps the previous
    checkpoint intact and leaves no temporary file, in the checkpoint's folder or elsewhere."""
    from datus.training import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    weights = {"state_dict": {"w": torch.arange(1000.0)}, "epoch": 1}
    io.save_checkpoint(weights, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (pickle's error type varies by object)
        io.save_checkpoint({"state_dict": {"w": torch.zeros(10**6)}, "epoch": 2, "hook": lambda: None}, path)
    assert path.read_bytes() == before
    assert io.load_checkpoint(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
