"""Bad input, one table: every kind of broken or odd file and bad setting, with its documented outcome.

Files (docs/robustness.md "Bad input"): each case is *converted* (read as 8-bit RGB), *skipped* (discover.py
goes on and names the file and the reason in summary.json) or an *error* when the dataset is
built, before any work. Settings: a bad value fails before the backbone is built or an image
is read, with a message naming the setting. Photos are real (scikit-image's, via DemoImages).
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from datus.data import (
    DEFAULT_MAX_PIXELS,
    DatasetError,
    DemoImages,
    ImageFolder,
    ImageReadError,
    MaskError,
    SkipUnreadable,
    read_image,
)
from tests.conftest import PROJECT_ROOT, compose_config

PATCH = 8  # tiny_vit's patch size: the smallest image side discovery accepts
NUM_CLASSES = 3
LOWER_LIMIT = 40_000_000  # a dataset.max_pixels that refuses the 8000x6000 (48 MP) photo

CONVERTED, SKIPPED, ERROR = "converted", "skipped", "error"


# ----------------------------------------------------------------------------- files
@functools.cache
def _demo(index: int) -> Image.Image:
    return Image.fromarray(DemoImages()[index]["image"].permute(1, 2, 0).numpy())


def _photo(index: int, height: int = 72, width: int = 96) -> np.ndarray:
    """A real colour photograph (one of three of scikit-image's), resized to ``height x width``."""
    return np.asarray(_demo(index % 3).resize((width, height), Image.BILINEAR))


def _mask(height: int, width: int, shift: int = 0) -> np.ndarray:
    """Horizontal bands of classes 0..NUM_CLASSES-1, a void (255) corner."""
    mask = ((np.arange(height)[:, None] * NUM_CLASSES // height + shift) % NUM_CLASSES).repeat(width, axis=1)
    mask[:2, :2] = 255
    return mask.astype(np.uint8)


@dataclass(frozen=True)
class Written:
    """What a case wrote: the image's (H, W) and, for exact conversions, the RGB it must read as."""

    size: tuple[int, int]
    expected: np.ndarray | None = None
    tolerance: float = 0.0  # mean absolute difference allowed (lossy JPEG)


def _truncated_jpeg(path: Path) -> Written:
    Image.fromarray(_photo(0)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return Written((72, 96))


def _zero_bytes(path: Path) -> Written:
    path.write_bytes(b"")
    return Written((10, 12))  # unknown: the header cannot be read, so no size check either


def _text(path: Path) -> Written:
    path.write_text("not an image, whatever the extension says\n")
    return Written((10, 12))


def _grayscale(path: Path) -> Written:
    gray = np.asarray(Image.fromarray(_photo(1)).convert("L"))
    Image.fromarray(gray, "L").save(path)
    return Written(gray.shape, np.repeat(gray[..., None], 3, axis=2))


def _rgba(path: Path) -> Written:
    rgb = _photo(2)
    alpha = np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], axis=0)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return Written(rgb.shape[:2], rgb)  # alpha dropped, colours kept (not blended with a background)


def _sixteen_bit(path: Path) -> Written:
    gray = np.asarray(Image.fromarray(_photo(0)).convert("L")).astype(np.uint16)
    deep = gray * 257 + np.arange(gray.shape[1], dtype=np.uint16)[None, :] % 100  # real 16-bit detail
    Image.fromarray(deep).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    scaled = np.rint(deep / 257.0).astype(np.uint8)  # scaled, never clipped to 255
    return Written(gray.shape, np.repeat(scaled[..., None], 3, axis=2))


def _palette(path: Path) -> Written:
    image = Image.fromarray(_photo(1)).quantize(colors=16)
    image.save(path)
    assert Image.open(path).mode == "P"
    return Written(image.size[::-1], np.asarray(image.convert("RGB")))


def _tiny(path: Path) -> Written:
    Image.fromarray(_photo(2, height=PATCH - 3, width=PATCH + 2)).save(path)
    return Written((PATCH - 3, PATCH + 2))


def _huge(path: Path) -> Written:
    """8000x6000 (48 MP): a smooth JPEG, so writing it takes well under a second."""
    Image.new("RGB", (8000, 6000), (200, 40, 90)).save(path, quality=90)
    return Written((6000, 8000))


def _huge_read(path: Path) -> Written:
    written = _huge(path)
    return Written(written.size, np.full((*written.size, 3), (200, 40, 90), np.uint8), tolerance=3.0)


def _png_photo(path: Path) -> Written:
    rgb = _photo(0, 60, 80)
    Image.fromarray(rgb).save(path)
    return Written(rgb.shape[:2], rgb)


def _jpeg_photo(path: Path) -> Written:
    rgb = _photo(1, 64, 70)
    Image.fromarray(rgb).save(path, quality=95)
    return Written(rgb.shape[:2], rgb, tolerance=6.0)


@dataclass(frozen=True)
class Case:
    """One bad or odd input: the file (``images/<file>``), its mask, the documented outcome.

    ``reason`` is a regex the error (or the skip reason) must match; the file's name must
    appear in it too. ``mask``: ``good`` (same size, labels in range), ``none`` (no mask
    file), ``wrong_size``, ``out_of_range``, ``orphan`` (a mask without an image).
    """

    id: str
    file: str
    write: Callable[[Path], Written]
    outcome: str
    reason: str = ""
    mask: str = "good"
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # dataset.max_pixels
    e2e: bool = True  # part of the end-to-end discover.py run (when not an error)

    @property
    def stem(self) -> str:
        return Path(self.file).stem


CASES = [
    Case("truncated_jpeg", "truncated.jpg", _truncated_jpeg, SKIPPED, r"Truncated|truncated"),
    Case("zero_bytes", "empty.png", _zero_bytes, SKIPPED, r"empty \(0 bytes\)"),
    Case("text_with_image_extension", "notes.jpg", _text, SKIPPED, r"cannot identify image file"),
    Case("grayscale_png", "gray.png", _grayscale, CONVERTED),
    Case("rgba_png", "rgba.png", _rgba, CONVERTED),
    Case("16bit_png", "deep16.png", _sixteen_bit, CONVERTED),
    Case("palette_png", "palette.png", _palette, CONVERTED),
    Case("smaller_than_a_patch", "tiny.png", _tiny, SKIPPED, rf"is 10x5, smaller than one patch \({PATCH} px\)"),
    Case("huge_over_max_pixels", "huge.jpg", _huge, SKIPPED,
         rf"8000x6000 is 48\.0 MP, more than dataset\.max_pixels={LOWER_LIMIT}", max_pixels=LOWER_LIMIT, e2e=False),
    Case("huge_under_default_limit", "huge.jpg", _huge_read, CONVERTED, e2e=False),  # 48 MP < 50 MP
    Case("space_and_non_ascii_png", "straße 1.png", _png_photo, CONVERTED),
    Case("space_and_cjk_jpeg", "日本 photo.jpg", _jpeg_photo, CONVERTED),
    Case("mask_of_wrong_size", "wrong_size.png", _png_photo, ERROR, r"true_masks/wrong_size\.png is 7x5 \(width x height\) but its image \S*images/wrong_size\.png is 80x60", "wrong_size"),
    Case("mask_labels_out_of_range", "bad_labels.png", _png_photo, ERROR,
         r"label values 7, 42 outside 0\.\.2 .*check dataset\.num_classes", "out_of_range"),
    Case("image_without_mask", "no_mask.png", _png_photo, ERROR, r"1 image\(s\) .* have no mask", "none"),
    Case("mask_without_image", "orphan.png", _png_photo, ERROR, r"1 mask\(s\) .* have no image", "orphan"),
]
GOOD = ["good_0.png", "good_1.jpg", "good_2.png", "good_3.png"]


def _big(path: Path) -> Written:
    Image.new("RGB", (1200, 900), (30, 160, 60)).save(path)
    return Written((900, 1200))


#: The end-to-end run's pixel limit and its over-limit image: the same refusal as the 48 MP case,
#: without scoring a 48 MP ground truth (5 s of evaluation) in a fast test.
E2E_LIMIT = 1_000_000
E2E_OVER_LIMIT = Case("over_max_pixels", "big.png", _big, SKIPPED,
                      rf"1200x900 is 1\.1 MP, more than dataset\.max_pixels={E2E_LIMIT}")


def _write_good(root: Path) -> dict[str, Written]:
    written = {}
    for i, name in enumerate(GOOD):
        rgb = _photo(i, 72 + 8 * i, 96)
        Image.fromarray(rgb).save(root / "images" / name, quality=95)
        Image.fromarray(_mask(*rgb.shape[:2], shift=i)).save(root / "true_masks" / f"{Path(name).stem}.png")
        written[Path(name).stem] = Written(rgb.shape[:2])
    return written


def _write_case(root: Path, case: Case) -> Written:
    """Write ``case``'s image and mask under ``root`` (= <dataset.root>/<split>)."""
    image = root / "images" / case.file
    written = case.write(image)
    mask = root / "true_masks" / f"{case.stem}.png"
    h, w = written.size
    if case.mask == "good":
        Image.fromarray(_mask(h, w)).save(mask, compress_level=1)
    elif case.mask == "wrong_size":
        Image.fromarray(_mask(5, 7)).save(mask)
    elif case.mask == "out_of_range":
        labels = _mask(h, w)
        labels[10, 10], labels[20, 20] = 7, 42
        Image.fromarray(labels).save(mask)
    elif case.mask == "orphan":
        image.unlink()
        Image.fromarray(_mask(h, w)).save(mask)
    return written


def _folder(root: Path, cases: list[Case]) -> dict[str, Written]:
    """A labelled folder dataset (``root/train``): the good photos and ``cases``; what each wrote."""
    for sub in ("images", "true_masks"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    written = _write_good(root / "train")
    return written | {case.stem: _write_case(root / "train", case) for case in cases}


def _check_message(message: str, case: Case) -> None:
    assert case.file in message, f"{case.file!r} not named in: {message}"
    assert re.search(case.reason, message, re.DOTALL), f"{case.reason!r} not in: {message}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_bad_input_has_its_documented_outcome(tmp_path: Path, case: Case) -> None:
    written = _folder(tmp_path, [case])[case.stem]
    build = functools.partial(ImageFolder, tmp_path, "train", num_classes=NUM_CLASSES, max_pixels=case.max_pixels)

    if case.outcome == ERROR:  # the dataset refuses to be built: nothing has been decomposed yet
        with pytest.raises(DatasetError) as info:
            build()
        _check_message(str(info.value), case)
        return

    dataset = build()
    index = [s.stem for s in dataset.samples].index(case.stem)
    entry = SkipUnreadable(dataset, min_size=PATCH)[index]  # what discovery sees
    if case.outcome == SKIPPED:
        assert set(entry) == {"stem", "index", "error"} and entry["stem"] == case.stem
        _check_message(entry["error"], case)
        if "smaller than one patch" not in case.reason:  # unreadable: reading it is an error naming it
            with pytest.raises(ImageReadError) as info:
                dataset.validate()
            _check_message(str(info.value), case)
        return

    assert case.outcome == CONVERTED and "error" not in entry  # the item itself: read once
    image, mask = entry["image"], entry["mask"]
    assert image.dtype == torch.uint8 and image.shape == (3, *written.size)
    assert tuple(mask.shape) == written.size and entry["stem"] == case.stem
    got, expected = image.permute(1, 2, 0).numpy(), written.expected
    if written.tolerance:  # lossy JPEG: close on average (every 7th pixel: the 48 MP photo is big)
        got, expected = got[::7, ::7], expected[::7, ::7]
        assert np.abs(got.astype(np.float32) - expected).mean() <= written.tolerance
    else:
        np.testing.assert_array_equal(got, expected)


def _load_entry_point(name: str) -> ModuleType:
    """``discover.py`` / ``evaluate.py`` / ``train.py`` as a module (its ``main(cfg)`` runs the job)."""
    spec = importlib.util.spec_from_file_location(f"_entry_{name}", PROJECT_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_discover_decomposes_the_good_images_and_names_the_skipped_ones(tmp_path: Path, cache_dir: Path) -> None:
    """One real discover.py run (tiny backbone) over good photos mixed with every converted or skipped case."""
    cases = [c for c in CASES if c.e2e and c.outcome != ERROR] + [E2E_OVER_LIMIT]
    written = _folder(tmp_path / "data", cases)
    images = tmp_path / "data" / "train" / "images"
    (images / "loop.png").symlink_to("loop.png")  # entries named like images that are no files: left out, named
    os.mkfifo(images / "pipe.png")
    out = tmp_path / "run"
    cfg = compose_config("discover", [
        "backbone=tiny_vit", "dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.split=train",
        f"dataset.num_classes={NUM_CLASSES}", f"dataset.max_pixels={E2E_LIMIT}", "resize.size=64",
        "k=3", "graph.min_patches=2", "logger=none", "trainer.enable_progress_bar=false",
        "num_pictures=100", f"paths.cache_dir={cache_dir}", f"cache_dir={tmp_path / 'cache'}",
    ], out)
    try:
        _load_entry_point("discover").main(cfg)
    finally:
        GlobalHydra.instance().clear()

    summary = json.loads((out / "summary.json").read_text())
    skipped = {entry["stem"]: entry["error"] for entry in summary["skipped"]}
    expected_skips = {c.stem: c for c in cases if c.outcome == SKIPPED}
    assert sorted(skipped) == sorted(expected_skips)
    for stem, case in expected_skips.items():
        _check_message(skipped[stem], case)

    decomposed = {stem: w.size for stem, w in written.items() if stem not in expected_skips}
    masks = {p.stem: p for p in (out / "pseudo_masks").glob("*.png")}
    assert sorted(masks) == sorted(decomposed)  # "straße 1" and "日本 photo" included, none for a skipped file
    for stem, size in decomposed.items():
        with Image.open(masks[stem]) as mask:
            assert mask.size[::-1] == size, stem  # the original image's size

    metrics = json.loads((out / "metrics.json").read_text())  # the split is labelled: evaluated
    assert sorted(metrics["missing_masks"]) == sorted(expected_skips)  # counted as unlabelled, listed
    assert summary["ignored_files"] == [{"file": str(images / "loop.png"), "reason": "a symbolic link loop"},
                                        {"file": str(images / "pipe.png"), "reason": "a FIFO (named pipe)"}]

    # a picture damaged in the run dir (the cache holds the original) is repaired by the rerun
    picture = sorted((out / "pictures").glob("*.png"))[0]
    original = picture.read_bytes()
    picture.write_bytes(original[:100])
    try:
        _load_entry_point("discover").main(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert picture.read_bytes() == original


# ----------------------------------------------------------------------------- files: read_image level
def test_a_missing_file_is_named_and_every_data_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"missing\.png: file does not exist"):
        read_image(tmp_path / "missing.png")
    assert issubclass(ImageReadError, DatasetError) and issubclass(MaskError, DatasetError)
    assert issubclass(DatasetError, ValueError)


def test_the_pixel_limit_is_checked_from_the_header_and_can_be_lifted(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(_photo(0, 40, 60)).save(path)
    with pytest.raises(ImageReadError, match=r"wide\.png: 60x40 is 0\.0 MP, more than dataset\.max_pixels=2000"):
        read_image(path, max_pixels=2000)
    assert read_image(path, max_pixels=2400).shape == (40, 60, 3)  # the limit is inclusive
    assert read_image(path, max_pixels=None).shape == (40, 60, 3)
    for bad in (0, -1, 2.5, "lots"):
        with pytest.raises(DatasetError, match=re.escape(f"dataset.max_pixels={bad!r}")):
            read_image(path, max_pixels=bad)


def test_every_bad_mask_of_a_folder_is_listed_at_once(tmp_path: Path) -> None:
    bad = [c for c in CASES if c.mask in ("wrong_size", "out_of_range")]
    _folder(tmp_path, bad)
    with pytest.raises(MaskError) as info:
        ImageFolder(tmp_path, "train", num_classes=NUM_CLASSES)
    message = str(info.value)
    assert message.startswith(f"2 of {len(GOOD) + 2} masks of folder split 'train' cannot be used")
    for case in bad:
        _check_message(message, case)


# ----------------------------------------------------------------------------- settings
#: (entry point, overrides, regex of the message): each fails before a backbone is built or an
#: image is read, naming the setting. ``{missing}`` is a folder that does not exist.
CONFIG_CASES = [
    ("discover", ["k=1"], r"k=1 must be a whole number >= 2"),
    ("discover", ["k=0"], r"k=0 must be"),
    ("discover", ["k=2.5"], r"k=2\.5 must be a whole number"),
    ("discover", ["labeling.kmeans.niter=0"], r"labeling\.kmeans\.niter=0 must be"),
    ("discover", ["method=kmeans_patches", "k=1"], r"k=1 must be"),
    # the mask format holds 0..254 and 255 = unlabelled: K=256 would write cluster 255 as unlabelled
    ("discover", ["k=256"], r"k=256: K must be an integer from 2 to 255"),
    ("discover", ["method=kmeans_patches", "k=270"], r"k=270: K must be an integer from 2 to 255"),
    ("discover", ["backbone.name=vit_huge"], r"backbone\.name='vit_huge' is unknown; choose one of .*dino_vits16.*tiny_vit"),
    ("discover", ["backbone=vit_huge"], r"Could not find 'backbone/vit_huge'.*dino_vits16.*tiny_vit"),
    ("discover", ["graph.min_patches=-1"], r"graph\.min_patches=-1 must be >= 0"),
    ("discover", ["graph.connectivity=6"], r"graph\.connectivity=6: choose 4 or 8"),
    ("discover", ["graph.louvain.resolution=0"], r"graph\.louvain\.resolution=0(\.0)? must be > 0"),
    ("discover", ["graph.affinity.knn=0"], r"graph\.affinity\.knn=0 must be >= 1"),
    ("discover", ["resize.mode=square", "resize.size=70"], r"resize\.size=70 \(resize\.mode=square\) is not a multiple"),
    ("discover", ["resize.size=4"], r"resize\.size=4 must be a whole number of pixels >= the patch size 8"),
    ("discover", ["dataset=folder", "dataset.max_pixels=-5"], r"dataset\.max_pixels=-5 must be a positive"),
    ("discover", ["dataset=folder", "dataset.root={missing}"], r"dataset\.root=.*nowhere does not exist"),
    ("evaluate", ["dataset=folder", "masks={missing}"], r"masks=.*nowhere: no such folder"),
    ("train", ["dataset=folder", "pseudo_masks={missing}"], r"pseudo_masks=.*nowhere: no such folder"),
]


def _no_work(*args, **kwargs):
    raise AssertionError("work started: a backbone was built or an image was read before the bad setting failed")


def _messages(err: BaseException | None) -> str:
    """The messages of ``err`` and its causes (Hydra wraps the target's own error)."""
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(("entry", "overrides", "message"), CONFIG_CASES,
                         ids=[" ".join(o) for _, o, _ in CONFIG_CASES])
def test_a_bad_setting_fails_before_any_work_naming_the_setting(tmp_path, cache_dir, monkeypatch, entry, overrides,
                                                                 message):
    import datus.backbones.registry
    import datus.data.base

    monkeypatch.setattr(datus.backbones.registry, "_vit", _no_work)
    monkeypatch.setattr(datus.backbones.registry, "_resnet", _no_work)
    monkeypatch.setattr(datus.data.base, "read_image", _no_work)
    overrides = [o.format(missing=tmp_path / "nowhere") for o in overrides]
    common = ["logger=none", f"paths.cache_dir={cache_dir}", f"paths.data_dir={tmp_path}"]
    if entry == "discover":
        common += ["backbone=tiny_vit", f"cache_dir={tmp_path / 'cache'}"]
    try:
        with pytest.raises(Exception) as info:  # Hydra wraps the target's error: its chain is checked below
            cfg = compose_config(entry, [*common, *overrides], tmp_path / "out")
            _load_entry_point(entry).main(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert not isinstance(info.value, AssertionError), info.value
    text = _messages(info.value)
    assert "work started" not in text
    assert re.search(message, text, re.DOTALL), text
    assert not (tmp_path / "out" / "segments").exists() and not (tmp_path / "cache").exists()


def test_discover_py_exits_non_zero_naming_the_setting(tmp_path):
    """The command line: ``python discover.py k=1`` fails at once, the setting in stderr."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "discover.py", "backbone=tiny_vit", "k=1", "logger=none",
         f"hydra.run.dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 1
    assert "error: k=1 must be a whole number >= 2" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr  # one line naming the setting; DATUS_DEBUG=1 shows the traceback
    assert not (out / "segments").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("size", "reason"), [((100000, 2), "smaller than one patch"),
                                              ((2000, 100), "aspect ratio 20.0, above resize.max_aspect_ratio"),
                                              ((1200, 160), "patches, above resize.max_patches")])
def test_hostile_sizes_are_skipped_from_the_header_before_decoding(tmp_path, size, reason, monkeypatch):
    """A 100000x2 strip used to be resized to a 120 GB tensor: now it is skipped by name, never decoded."""
    import datus.data.base
    from datus.data import ImageFolder
    from datus.data.safe import SkipUnreadable
    from datus.transforms import ResizeForBackbone

    folder = tmp_path / "all" / "images"
    folder.mkdir(parents=True)
    Image.new("RGB", size, (120, 40, 200)).save(folder / "strip.png")
    Image.new("RGB", (96, 64), (20, 40, 60)).save(folder / "fine.png")
    resize = ResizeForBackbone(64, 8, max_patches=400, max_aspect_ratio=8)
    dataset = SkipUnreadable(ImageFolder(tmp_path, "all", transform=resize), min_size=8)
    decoded = []
    read = datus.data.base.read_image
    monkeypatch.setattr(datus.data.base, "read_image", lambda path, *a, **k: decoded.append(path) or read(path, *a, **k))
    items = {dataset[i]["stem"]: dataset[i] for i in range(len(dataset))}
    assert "error" not in items["fine"] and items["fine"]["image"].shape[-2:] == (64, 96)
    assert reason in items["strip"]["error"] and "strip.png" in items["strip"]["error"]
    assert all("strip" not in str(p) for p in decoded)  # decided from the header: never decoded


# ----------------------------------------------------------------------------- messages: one line naming the file
def test_a_truncated_or_empty_pseudo_mask_is_named(tmp_path: Path) -> None:
    """evaluate.py used to stop with a bare ``OSError: image file is truncated``."""
    from datus.evaluation import EvaluationError, evaluate_masks
    from datus.masks import save_mask

    written = _folder(tmp_path / "data", [])
    dataset = ImageFolder(tmp_path / "data", "train", num_classes=NUM_CLASSES)
    masks = tmp_path / "masks"
    for stem, w in written.items():
        save_mask(masks / f"{stem}.png", _mask(*w.size))
    assert evaluate_masks(dataset, masks_dir=masks, num_clusters=3)[0]["images"] == len(written)
    first, second = sorted(written)[:2]
    data = (masks / f"{first}.png").read_bytes()
    (masks / f"{first}.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(EvaluationError, match=rf"cannot read mask {re.escape(str(masks / first))}\.png: .*truncated"):
        evaluate_masks(dataset, masks_dir=masks, num_clusters=3)
    (masks / f"{first}.png").write_bytes(b"")
    (masks / f"{second}.png").write_bytes(b"")
    with pytest.raises(EvaluationError, match=r"cannot read mask .*: the file is empty \(0 bytes\)"):
        evaluate_masks(dataset, masks_dir=masks, num_clusters=None)  # K inferred: the masks are read first


def test_an_unreadable_split_folder_is_named(tmp_path: Path, monkeypatch) -> None:
    """``PermissionError`` without a path (root ignores permissions, so the refusal is simulated)."""
    _folder(tmp_path, [])
    images, scandir = tmp_path / "train" / "images", os.scandir

    def refuse(path):
        if Path(path) == images:
            raise PermissionError(errno.EACCES, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(DatasetError, match=rf"cannot read {re.escape(str(images))}: Permission denied "
                                           r"\(check its permissions\)"):
        ImageFolder(tmp_path, "train", num_classes=NUM_CLASSES)


def test_entries_that_are_not_image_files_are_left_out_and_named(tmp_path: Path) -> None:
    """A symbolic link loop used to refuse the whole dataset; FIFOs were dropped without a word."""
    written = _folder(tmp_path, [])
    images = tmp_path / "train" / "images"
    (images / "loop_a.png").symlink_to("loop_b.png")
    (images / "loop_b.png").symlink_to("loop_a.png")
    (images / "gone.jpg").symlink_to("nowhere.jpg")
    (images / "folder.png").mkdir()
    os.mkfifo(images / "pipe.png")
    dataset = ImageFolder(tmp_path, "train", num_classes=NUM_CLASSES)
    assert [s.stem for s in dataset.samples] == sorted(written)
    assert {Path(e["file"]).name: e["reason"] for e in dataset.ignored_files} == {
        "loop_a.png": "a symbolic link loop", "loop_b.png": "a symbolic link loop",
        "gone.jpg": "a broken symbolic link (its target does not exist)", "folder.png": "a folder",
        "pipe.png": "a FIFO (named pipe)"}


def test_a_full_disk_names_the_file_and_keeps_what_was_there(tmp_path: Path, monkeypatch) -> None:
    import datus.io
    from datus.io import WriteError, load_json, write_json

    target = tmp_path / "run" / "summary.json"
    write_json(target, {"kept": True})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datus.io.os, "fsync", full)
    with pytest.raises(WriteError, match=rf"cannot write {re.escape(str(target))}: No space left on device; "
                                         r"free space on that disk .* rerun the same command") as info:
        write_json(target, {"kept": False})
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert load_json(target) == {"kept": True} and sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


@pytest.fixture
def _own_environment(monkeypatch):
    """run_command sets HYDRA_FULL_ERROR for its process: restore the test process's environment."""
    from datus.cli.errors import _OWNED, DEBUG_VARIABLE

    for name in ("HYDRA_FULL_ERROR", _OWNED, DEBUG_VARIABLE):
        monkeypatch.delenv(name, raising=False)


def test_a_user_error_ends_in_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch,
                                                                    _own_environment) -> None:
    """What every command does on an error: ``error: <message>`` and exit 1; DATUS_DEBUG=1 re-raises."""
    import datus.io
    from datus.cli import run_command
    from datus.io import write_json

    def disk_full():
        monkeypatch.setattr(datus.io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        write_json(tmp_path / "run" / "metrics.json", {})

    def bad_mask():
        raise MaskError(f"mask {tmp_path / 'a.png'} is 5x7 (width x height) but its image is 96x72")

    for main, expected in [(disk_full, f"error: cannot write {tmp_path / 'run' / 'metrics.json'}: full; free space"),
                           (bad_mask, f"error: mask {tmp_path / 'a.png'} is 5x7")]:
        with pytest.raises(SystemExit) as info:
            run_command(main)
        assert info.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(expected) and "Traceback" not in err and len(err.splitlines()) == 2, err
    with pytest.raises(KeyError):  # a bug is not the user's to fix: its traceback stays
        run_command(lambda: {}["missing"])
    monkeypatch.setenv("DATUS_DEBUG", "1")
    with pytest.raises(MaskError):
        run_command(bad_mask)
