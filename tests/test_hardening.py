"""Hardening III: the same command gives the same result, one run per folder, no misread masks, one-line errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from tests.conftest import PROJECT_ROOT, compose_config
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


# ---- one run per folder -------------------------------------------------------------------------
def _script(script: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


TINY = ["backbone=tiny_vit", "resize.size=64", "k=3", "logger=none", "num_pictures=0", "trainer.enable_progress_bar=false"]


def test_a_second_run_into_a_held_folder_is_refused_and_a_dead_runs_folder_is_taken_over(photos, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom datus.runs import hold_run_dir\n"
         f"with hold_run_dir({str(run_dir)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = [
            _script("discover.py", *TINY, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}"),
            _script("train.py", *_overrides(photos, run_dir), "trainer.max_epochs=1"),
            _script("evaluate.py", "dataset=folder", f"dataset.root={photos / 'data'}", "dataset.num_classes=3",
                    "dataset.split=train", f"masks={photos / 'run' / 'pseudo_masks'}", "logger=none",
                    f"hydra.run.dir={run_dir}"),
        ]
        for proc in refused:
            assert proc.returncode == 1, proc.stderr[-2000:]
            assert f"{run_dir} is in use by another run" in proc.stderr and f"pid {holder.pid}" in proc.stderr
            assert "Traceback" not in proc.stderr
        assert not (run_dir / "summary.json").exists() and not (run_dir / "metrics.json").exists()
    finally:
        holder.kill()  # dies holding the lock: the kernel releases it
        holder.wait()
    proc = _script("discover.py", *TINY, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "summary.json").is_file()


# ---- label masks that would be misread ----------------------------------------------------------
def _folder(root: Path, masks: dict[str, np.ndarray], photos: dict[str, np.ndarray], mask_ext: str = "png",
            exif: dict[str, int] | None = None) -> Path:
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "true_masks").mkdir()
    for stem, image in photos.items():
        picture = Image.fromarray(image)
        if exif and stem in exif:
            info = picture.getexif()
            info[0x0112] = exif[stem]
            picture.save(root / "train" / "images" / f"{stem}.jpg", exif=info.tobytes(), quality=95)
        else:
            picture.save(root / "train" / "images" / f"{stem}.png")
        Image.fromarray(masks[stem]).save(root / "train" / "true_masks" / f"{stem}.{mask_ext}",
                                          **({"lossless": True} if mask_ext == "webp" else {}))
    return root


def _demo(count: int = 2, square: bool = False) -> dict[str, np.ndarray]:
    from datus.data.demo import DemoImages

    out = {}
    for item in list(DemoImages())[:count]:
        image = np.ascontiguousarray(item["image"].permute(1, 2, 0).numpy()[::4, ::4])
        if square:
            side = min(image.shape[:2])
            image = np.ascontiguousarray(image[:side, :side])
        out[item["stem"]] = image
    return out


def _truth(photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {stem: (image.mean(axis=2) // 86).astype(np.uint8) for stem, image in photos.items()}


def test_lossy_label_masks_are_refused_by_name_and_lossless_ones_read(tmp_path):
    from datus.data import ImageFolder
    from datus.data.errors import MaskError

    photos = _demo()
    jpeg = _folder(tmp_path / "jpeg", _truth(photos), photos, "jpg")
    with pytest.raises(MaskError, match=r"2 of 2 label masks of folder split 'train' are stored in a lossy format"
                                        r" \(JPEG or lossy WebP\).*\.jpg.*save the label maps losslessly"):
        ImageFolder(jpeg, num_classes=3)
    webp = _folder(tmp_path / "webp", _truth(photos), photos, "webp")  # lossless WebP: exact labels
    dataset = ImageFolder(webp, num_classes=3)
    for sample in dataset.samples:
        assert np.array_equal(dataset.read_mask(sample), _truth(photos)[sample.stem])


def test_suim_decodes_its_colour_codes_from_lossy_files(suim_root, tmp_path):
    """SUIM's masks are colour codes thresholded at 128: documented as robust, they may be JPEG."""
    from datus.data import SUIM

    root = tmp_path / "suim" / "train_val"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in ("d_r_132_", "d_r_153_"):
        (root / "images" / f"{stem}.jpg").write_bytes((suim_root / "train_val" / "images" / f"{stem}.jpg").read_bytes())
        Image.open(suim_root / "train_val" / "masks" / f"{stem}.png").convert("RGB").save(root / "masks" / f"{stem}.jpg",
                                                                                          quality=95)
    dataset = SUIM(tmp_path / "suim", split="train_val")
    exact = SUIM(suim_root, split="train_val", mask_size_mismatch="skip")
    for sample in dataset.samples:
        truth = exact.read_mask(next(s for s in exact.samples if s.stem == sample.stem))
        assert (dataset.read_mask(sample) == truth).mean() > 0.97  # only a few edge pixels move


def test_an_exif_turned_photo_with_a_mask_follows_the_dataset_exif_rule(tmp_path):
    from datus.data import ImageFolder
    from datus.data.errors import MaskError
    from datus.data.io import orient

    photos = _demo(1, square=True)
    stem = next(iter(photos))
    truth = _truth(photos)
    root = _folder(tmp_path / "square", truth, photos, exif={stem: 6})
    with pytest.raises(MaskError, match=r"(?s)EXIF orientation 6.*cannot be told.*dataset.exif=displayed.*dataset.exif=stored"):
        ImageFolder(root, num_classes=3)
    stored = ImageFolder(root, num_classes=3, exif="stored")
    assert np.array_equal(stored.read_mask(stored.samples[0]), orient(truth[stem], 6))  # turned with its photo
    assert stored.load(0)["image"].shape[1:] == orient(truth[stem], 6).shape
    displayed = ImageFolder(root, num_classes=3, exif="displayed")
    assert np.array_equal(displayed.read_mask(displayed.samples[0]), truth[stem])
    wide = {stem: np.ascontiguousarray(image[: image.shape[0] * 3 // 4]) for stem, image in _demo(1).items()}
    root = _folder(tmp_path / "wide", _truth(wide), wide, exif={next(iter(wide)): 6})  # the mask of the stored pixels
    with pytest.raises(MaskError, match=r"(?s)EXIF orientation 6: displayed rotated 90° clockwise.*stored pixels' size"):
        ImageFolder(root, num_classes=3)
    assert ImageFolder(root, num_classes=3, exif="stored").read_mask(ImageFolder(root, num_classes=3, exif="stored")
                                                                        .samples[0]).shape == orient(_truth(wide)[next(iter(wide))], 6).shape


# ---- one-line errors ------------------------------------------------------------------------------
def test_a_short_write_without_errno_in_the_feature_cache_ends_in_one_line(photos, tmp_path, monkeypatch, capsys):  # noqa: F811
    import datus.features
    from datus.cli import run_command
    from datus.cli.train import train_from_config

    def full_disk(file, array, *args, **kwargs):
        raise OSError("25344 requested and 18368 written")  # what numpy raises on a full disk: no errno

    monkeypatch.setattr(datus.features.np, "save", full_disk)
    cfg = compose_config("train", [*_overrides(photos, tmp_path / "run", "linear_head"), "trainer.max_epochs=1"],
                         tmp_path / "run")
    with pytest.raises(SystemExit) as info:
        run_command(lambda: train_from_config(cfg))
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert re.search(r"error: cannot write \S+\.npy: 25344 requested and 18368 written \(a short write: the disk is "
                     r"probably full\); free space", err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["no_key", "no_network"])
def test_wandb_without_a_key_or_network_logs_offline_decided_before_the_work(tmp_path, case):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    (tmp_path / "home").mkdir()
    env.update(HOME=str(tmp_path / "home"), NETRC=str(tmp_path / "home" / ".netrc"))
    if case == "no_network":
        env.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9")  # nothing listens on port 9
    started = time.monotonic()
    proc = _script("discover.py", *[a for a in TINY if a != "logger=none"], "logger=wandb",
                   f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    reason = "no W&B API key" if case == "no_key" else "127.0.0.1:9 cannot be reached"
    assert f"logger=wandb: {reason}" in output and "wandb sync" in output, output[-3000:]
    assert "Traceback" not in output
    assert output.index("logger=wandb:") < output.index("datus, tiny_vit on")  # decided before the work
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert time.monotonic() - started < 90  # no long wait for a server that is not there


# ---- Ctrl+C ---------------------------------------------------------------------------------------
def test_ctrl_c_in_evaluate_ends_in_one_line_with_status_130(camvid_root, tmp_path):
    proc = subprocess.Popen([sys.executable, "evaluate.py", "dataset=camvid", f"dataset.root={camvid_root}",
                             "dataset.split=train", f"masks={camvid_root / 'trainannot'}", "k=12", "logger=none",
                             f"hydra.run.dir={tmp_path / 'eval'}"],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while (line := proc.stdout.readline()) and "scoring" not in line:  # into the evaluation of 367 masks
        seen.append(line)
    time.sleep(1)
    if proc.poll() is not None:
        pytest.skip("the evaluation finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + line + rest
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted (Ctrl+C): stopping; finished work is kept on disk, rerun the same command" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output


@pytest.mark.slow
def test_ctrl_c_in_training_ends_in_one_line_with_the_resume_hint(photos, tmp_path):  # noqa: F811
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "train.py", *_overrides(photos, tmp_path, "linear_head"),
                             "trainer.max_epochs=200"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not last.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted (Ctrl+C): stopping; finished work is kept on disk, rerun with ckpt_path=last to resume" in output
    assert "Traceback" not in output and "Detected KeyboardInterrupt" not in output


# ---- multirun failures ----------------------------------------------------------------------------
def test_every_failed_job_of_a_multirun_is_named_logged_and_reported(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "discover.py", "-m", *[a for a in TINY if not a.startswith("k=")],
                           "k=1,3,0", f"hydra.sweep.dir={sweep}", f"cache_dir={tmp_path / 'cache'}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "2 job(s) of the multirun failed" in proc.stderr, proc.stderr[-3000:]
    assert re.search(r"0_\S*k=1\S*: error: k=1 ", proc.stderr) and re.search(r"2_\S*k=0\S*: error: k=0 ", proc.stderr)
    failed = sorted(p.parent for p in sweep.rglob("failed.json"))
    assert [f.name.split("_")[0] for f in failed] == ["0", "2"] and "k=1" in failed[0].name and "k=0" in failed[1].name
    for folder in failed:
        assert "error: k=" in (folder / "discover.log").read_text()
    assert [p.name for p in sweep.glob("1_*/metrics.json")] or [p.name for p in sweep.glob("1_*/summary.json")]
    report = subprocess.run([sys.executable, "-m", "datus.report", str(sweep)], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert "2 failed job(s)" in report.stdout and f"{failed[0].name}: error: k=1" in report.stdout, report.stdout + report.stderr


# ---- a moved training folder ----------------------------------------------------------------------
def test_a_moved_run_folder_keeps_tracking_its_best_checkpoint(tmp_path):
    """Lightning drops the best score when checkpoints resume from another folder; ours re-roots it."""
    from datus.training import RelocatableCheckpoint

    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    kwargs = dict(monitor="val/miou", mode="max", save_top_k=1, filename="best")
    before = RelocatableCheckpoint(dirpath=old, **kwargs)
    before.best_model_score = torch.tensor(0.7)
    before.best_model_path = before.kth_best_model_path = str(old / "best.ckpt")
    before.best_k_models = {str(old / "best.ckpt"): torch.tensor(0.7)}
    before.kth_value = torch.tensor(0.7)
    after = RelocatableCheckpoint(dirpath=new, **kwargs)
    assert after.state_key == before.state_key and after.state_key.startswith("ModelCheckpoint{")
    after.load_state_dict(before.state_dict())
    assert float(after.best_model_score) == pytest.approx(0.7) and after.best_model_path == str(new / "best.ckpt")
    assert list(after.best_k_models) == [str(new / "best.ckpt")]
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert not after.check_monitor_top_k(trainer, torch.tensor(0.5))  # a worse epoch does not replace best.ckpt
    assert after.check_monitor_top_k(trainer, torch.tensor(0.8))
