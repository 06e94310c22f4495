"""Tests for datus.data: real CamVid, generated SUIM / COCO-Stuff / folder files, image modes, errors, configs."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from datus.data import (
    CAMVID_CLASSES,
    COCOSTUFF27_CLASSES,
    COCOSTUFF_FINE_TO_COARSE,
    SUIM,
    CamVid,
    CocoStuff27,
    DatasetError,
    DemoImages,
    ImageFolder,
    Sample,
    SegmentationDataset,
    read_image,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CAMVID_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "camvid"
CONF_DIR = PROJECT_ROOT / "conf" / "dataset"


# ----------------------------------------------------------------------------- helpers
def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG-friendly) with distinct channels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], axis=-1)
    return np.clip(img + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def camvid_root() -> Path:
    if not (CAMVID_ROOT / "train").is_dir():
        pytest.skip(f"CamVid copy not found at {CAMVID_ROOT} (only present in the shared workspace)")
    return CAMVID_ROOT


# SUIM colour codes R*4 + G*2 + B; 250 / 5 stand in for JPEG-like noise around 255 / 0.
SUIM_COLOURS = {
    0: (5, 0, 3),  # BW black
    1: (0, 5, 250),  # HD blue
    2: (4, 252, 0),  # PF green
    3: (0, 250, 255),  # WR cyan
    4: (250, 0, 6),  # RO red
    5: (255, 3, 250),  # RI magenta
    6: (251, 255, 0),  # FV yellow
    7: (250, 250, 250),  # SR white
}
SUIM_FINE_TO_COARSE_EXPECTED = {0: 5, 1: 0, 2: 5, 3: 4, 4: 1, 5: 3, 6: 2, 7: 5}


def _suim_mask() -> tuple[np.ndarray, np.ndarray]:
    """A 16x24 colour-coded mask with 8 vertical stripes (one per code) and the code map."""
    codes = np.repeat(np.arange(8), 3)[None, :].repeat(16, axis=0)
    rgb = np.zeros((16, 24, 3), np.uint8)
    for code, colour in SUIM_COLOURS.items():
        rgb[codes == code] = colour
    return rgb, codes


@pytest.fixture()
def suim_root(tmp_path: Path) -> Path:
    root = tmp_path / "suim"
    rgb, _ = _suim_mask()
    for split in ("train_val", "TEST"):
        for i, stem in enumerate(["d_r_122_", "f_r_1001_", "n_l_5_"]):
            _save(_photo(16, 24, i), root / split / "images" / f"{stem}.jpg", quality=90)
            _save(rgb, root / split / "masks" / f"{stem}.bmp")
    return root


# value in a stuffthingmap = COCO category id - 1
# (0 person, 2 car, 156 sky-other, 148 road, 16 cat, 61 chair, 100 carpet, 101 ceiling-other, 171 wall-concrete)
COCO_CASES = {0: 9, 2: 11, 156: 23, 148: 21, 16: 7, 61: 3, 100: 13, 101: 12, 171: 18, 255: 255}


@pytest.fixture()
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "cocostuff"
    values = np.array(list(COCO_CASES), dtype=np.uint8)
    label = np.tile(np.repeat(values, 2)[None, :], (6, 1))  # 6 x 20
    for i, stem in enumerate(["000000000139", "000000000285", "000000000632"]):
        _save(_photo(6, 20, i), root / "images" / "val2017" / f"{stem}.jpg")
        _save(label, root / "annotations" / "val2017" / f"{stem}.png")
    return root


def _make_folder(root: Path, split: str = "train", masks: list[np.ndarray] | None = None, n: int = 3) -> Path:
    for i in range(n):
        _save(_photo(10, 12, i), root / split / "images" / f"img_{i}.png")
        if masks is not None:
            _save(masks[i], root / split / "true_masks" / f"img_{i}.png")
    return root


def _index_masks(n: int = 3, num_classes: int = 4, void: int = 255) -> list[np.ndarray]:
    masks = []
    for i in range(n):
        m = (np.arange(120).reshape(10, 12) + i) % num_classes
        m[0, :3] = void
        masks.append(m.astype(np.uint8))
    return masks


# ----------------------------------------------------------------------------- CamVid (real data)
def test_camvid_counts_and_classes(camvid_root: Path) -> None:
    train, val = CamVid(camvid_root, "train"), CamVid(camvid_root, "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.classes == CAMVID_CLASSES
    assert train.classes == (
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    )  # fmt: skip
    assert train.num_classes == 11 and train.ignore_index == 255 and train.has_masks
    assert train.name == "camvid" and train.split == "train"
    assert [s.stem for s in train.samples] == sorted(s.stem for s in train.samples)
    assert all(s.mask is not None and s.mask.name == s.image.name for s in train.samples)
    assert "camvid" in repr(train) and "367" in repr(train) and "train" in repr(train)


def test_camvid_item_format_and_void(camvid_root: Path) -> None:
    ds = CamVid(camvid_root, "val")
    item = ds[0]
    assert set(item) == {"image", "mask", "stem", "index"}
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 360, 480)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (360, 480)
    assert item["stem"] == ds.samples[0].stem and item["index"] == 0
    seen: set[int] = set()
    for sample in ds.samples[:20]:
        seen |= set(np.unique(ds.read_mask(sample)).tolist())
    assert seen <= set(range(11)) | {255}
    assert 255 in seen, "void (11 in the files) must come out as 255"
    assert 11 not in seen


def test_camvid_image_is_rgb_not_bgr(camvid_root: Path) -> None:
    ds = CamVid(camvid_root, "train")
    item = ds[3]
    reference = np.asarray(Image.open(ds.samples[3].image).convert("RGB"))
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), reference)
    assert not np.array_equal(reference, reference[..., ::-1])  # the check would catch a BGR swap


def test_camvid_validate_and_dataloader(camvid_root: Path) -> None:
    ds = CamVid(camvid_root, "val", transform=lambda item: {**item, "extra": 1})
    assert ds.validate() is ds
    assert ds[-1]["index"] == len(ds) - 1 and ds[0]["extra"] == 1
    with pytest.raises(IndexError):
        ds[len(ds)]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)))
    assert batch["image"].shape == (4, 3, 360, 480) and batch["mask"].shape == (4, 360, 480)


def test_camvid_bad_split(camvid_root: Path) -> None:
    with pytest.raises(DatasetError, match="dataset.split"):
        CamVid(camvid_root, "training")


# ----------------------------------------------------------------------------- SUIM (generated, real format)
def test_suim_fine_decoding(suim_root: Path) -> None:
    ds = SUIM(suim_root, "train_val", classes="fine")
    assert ds.classes == ("BW", "HD", "PF", "WR", "RO", "RI", "FV", "SR") and ds.num_classes == 8
    assert len(ds) == 3 and ds.has_masks
    item = ds[0]
    _, codes = _suim_mask()
    np.testing.assert_array_equal(item["mask"].numpy(), codes)
    assert item["image"].shape == (3, 16, 24)


def test_suim_coarse_decoding_default(suim_root: Path) -> None:
    ds = SUIM(suim_root, "TEST")
    assert ds.classes == ("HD", "RO", "FV", "RI", "WR", "BW+PF+SR") and ds.num_classes == 6
    _, codes = _suim_mask()
    expected = np.vectorize(SUIM_FINE_TO_COARSE_EXPECTED.get)(codes)
    np.testing.assert_array_equal(ds[1]["mask"].numpy(), expected)
    assert ds.validate() is ds


def test_suim_bad_classes_and_split(suim_root: Path) -> None:
    with pytest.raises(DatasetError, match="dataset.classes"):
        SUIM(suim_root, classes="medium")
    with pytest.raises(DatasetError, match="dataset.split"):
        SUIM(suim_root, split="test")


# ----------------------------------------------------------------------------- COCO-Stuff (generated)
# STEGO's fine_to_coarse (src/data.py), copied as an independent reference for the table in cocostuff.py.
STEGO_FINE_TO_COARSE = {
    0: 9, 1: 11, 2: 11, 3: 11, 4: 11, 5: 11, 6: 11, 7: 11, 8: 11, 9: 8, 10: 8, 11: 8, 12: 8, 13: 8, 14: 8,
    15: 7, 16: 7, 17: 7, 18: 7, 19: 7, 20: 7, 21: 7, 22: 7, 23: 7, 24: 7, 25: 6, 26: 6, 27: 6, 28: 6, 29: 6,
    30: 6, 31: 6, 32: 6, 33: 10, 34: 10, 35: 10, 36: 10, 37: 10, 38: 10, 39: 10, 40: 10, 41: 10, 42: 10,
    43: 5, 44: 5, 45: 5, 46: 5, 47: 5, 48: 5, 49: 5, 50: 5, 51: 2, 52: 2, 53: 2, 54: 2, 55: 2, 56: 2, 57: 2,
    58: 2, 59: 2, 60: 2, 61: 3, 62: 3, 63: 3, 64: 3, 65: 3, 66: 3, 67: 3, 68: 3, 69: 3, 70: 3, 71: 0, 72: 0,
    73: 0, 74: 0, 75: 0, 76: 0, 77: 1, 78: 1, 79: 1, 80: 1, 81: 1, 82: 1, 83: 4, 84: 4, 85: 4, 86: 4, 87: 4,
    88: 4, 89: 4, 90: 4, 91: 17, 92: 17, 93: 22, 94: 20, 95: 20, 96: 22, 97: 15, 98: 25, 99: 16, 100: 13,
    101: 12, 102: 12, 103: 17, 104: 17, 105: 23, 106: 15, 107: 15, 108: 17, 109: 15, 110: 21, 111: 15,
    112: 25, 113: 13, 114: 13, 115: 13, 116: 13, 117: 13, 118: 22, 119: 26, 120: 14, 121: 14, 122: 15,
    123: 22, 124: 21, 125: 21, 126: 24, 127: 20, 128: 22, 129: 15, 130: 17, 131: 16, 132: 15, 133: 22,
    134: 24, 135: 21, 136: 17, 137: 25, 138: 16, 139: 21, 140: 17, 141: 22, 142: 16, 143: 21, 144: 21,
    145: 25, 146: 21, 147: 26, 148: 21, 149: 24, 150: 20, 151: 17, 152: 14, 153: 21, 154: 26, 155: 15,
    156: 23, 157: 20, 158: 21, 159: 24, 160: 15, 161: 24, 162: 22, 163: 25, 164: 15, 165: 20, 166: 17,
    167: 17, 168: 22, 169: 14, 170: 18, 171: 18, 172: 18, 173: 18, 174: 18, 175: 18, 176: 18, 177: 26,
    178: 26, 179: 19, 180: 19, 181: 24,
}  # fmt: skip


def test_cocostuff_table_matches_stego() -> None:
    lut = COCOSTUFF_FINE_TO_COARSE
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert {v: int(lut[v]) for v in range(182)} == STEGO_FINE_TO_COARSE
    assert (lut[182:] == 255).all()
    assert len(COCOSTUFF27_CLASSES) == 27 and COCOSTUFF27_CLASSES[9] == "person"
    assert COCOSTUFF27_CLASSES[21] == "ground" and COCOSTUFF27_CLASSES[23] == "sky"


def test_cocostuff_decoding(coco_root: Path) -> None:
    ds = CocoStuff27(coco_root, "val")
    assert len(ds) == 3 and ds.num_classes == 27 and ds.name == "cocostuff27"
    mask = ds[0]["mask"].numpy()
    expected = np.repeat(np.array(list(COCO_CASES.values())), 2)
    np.testing.assert_array_equal(mask, np.tile(expected, (6, 1)))


def test_cocostuff_image_list(coco_root: Path, tmp_path: Path) -> None:
    listing = tmp_path / "subset.txt"
    listing.write_text("000000000285\n000000000632.jpg\n\n")
    ds = CocoStuff27(coco_root, "val", image_list=listing)
    assert [s.stem for s in ds.samples] == ["000000000285", "000000000632"]
    # STEGO layout: a bare file name is looked up under root/curated/<split>2017/
    curated = coco_root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    curated.parent.mkdir(parents=True)
    curated.write_text("000000000139\n")
    assert len(CocoStuff27(coco_root, "val", image_list="Coco164kFull_Stuff_Coarse_7.txt")) == 1

    listing.write_text("000000000285\n000000999999\n000000888888\n")
    with pytest.raises(DatasetError, match=r"2 of 3 .*000000999999.*000000888888"):
        CocoStuff27(coco_root, "val", image_list=listing)
    with pytest.raises(DatasetError, match="dataset.image_list"):
        CocoStuff27(coco_root, "val", image_list=tmp_path / "nope.txt")


def test_cocostuff_rejects_unknown_values(coco_root: Path) -> None:
    path = coco_root / "annotations" / "val2017" / "000000000139.png"
    _save(np.full((6, 20), 200, np.uint8), path)
    with pytest.raises(DatasetError, match="000000000139.png"):
        CocoStuff27(coco_root, "val")[0]


# ----------------------------------------------------------------------------- folder
def test_folder_without_masks(tmp_path: Path) -> None:
    ds = ImageFolder(_make_folder(tmp_path / "folder"), "train")
    assert len(ds) == 3 and not ds.has_masks and ds.classes == () and ds.name == "folder"
    item = ds[2]
    assert "mask" not in item and item["image"].shape == (3, 10, 12) and item["stem"] == "img_2"


def test_folder_with_masks_and_names(tmp_path: Path) -> None:
    masks = _index_masks()
    ds = ImageFolder(_make_folder(tmp_path / "folder", masks=masks), "train", num_classes=4)
    assert ds.has_masks and ds.classes == ("class_0", "class_1", "class_2", "class_3")
    np.testing.assert_array_equal(ds[1]["mask"].numpy(), masks[1].astype(np.int64))
    named = ImageFolder(tmp_path / "folder", num_classes=4, class_names=["a", "b", "c", "d"])
    assert named.classes == ("a", "b", "c", "d")
    with pytest.raises(DatasetError, match="dataset.class_names"):
        ImageFolder(tmp_path / "folder", num_classes=4, class_names=["a", "b"])


def test_folder_ignore_index_remap(tmp_path: Path) -> None:
    raw = np.array([[9, 0, 1], [2, 9, 3]], np.uint8)
    root = tmp_path / "folder"
    _save(_photo(2, 3), root / "train" / "images" / "a.png")
    _save(raw, root / "train" / "true_masks" / "a.png")
    ds = ImageFolder(root, num_classes=4, ignore_index=9)
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), [[255, 0, 1], [2, 255, 3]])
    assert ds.ignore_index == 255
    _save(np.array([[255, 0, 1], [2, 9, 3]], np.uint8), root / "train" / "true_masks" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png.*255.*dataset.ignore_index=9"):
        ds[0]


def test_folder_missing_num_classes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "folder", masks=_index_masks())
    with pytest.raises(DatasetError, match="dataset.num_classes"):
        ImageFolder(root)


def test_folder_rejects_colour_masks(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "folder", n=1)
    _save(_photo(10, 12), root / "train" / "true_masks" / "img_0.png")
    with pytest.raises(DatasetError, match=r"img_0\.png.*single-channel"):
        ImageFolder(root, num_classes=3)[0]


# ----------------------------------------------------------------------------- demo
def test_demo_images_offline() -> None:
    ds = DemoImages()
    assert 5 <= len(ds) <= 8 and ds.classes == () and not ds.has_masks and ds.name == "demo"
    assert ds.root.name == "data" and "skimage" in ds.root.parts
    for i in range(len(ds)):
        item = ds[i]
        assert "mask" not in item
        img = item["image"]
        assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
        assert min(img.shape[1:]) >= 256
        # genuinely colour: the channels differ
        assert (img[0].int() - img[2].int()).abs().float().mean() > 5
    with pytest.raises(DatasetError, match="dataset.split"):
        DemoImages(split="train")


# ----------------------------------------------------------------------------- image modes
def _write_mode(path: Path, mode: str) -> np.ndarray | None:
    """Write a small image in ``mode``; return the expected RGB array when it is exact."""
    gray = np.tile(np.arange(0, 240, 15, dtype=np.uint8), (6, 1))  # 6 x 16
    if mode == "LA":
        Image.fromarray(np.dstack([gray, np.full_like(gray, 7)]), "LA").save(path)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        im = Image.fromarray((gray // 15 % 2).astype(np.uint8), "P")
        im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        im.save(path, transparency=0)
        idx = gray // 15 % 2
        return np.where(idx[..., None] == 0, [255, 0, 0], [0, 0, 255]).astype(np.uint8)
    if mode == "1":
        Image.fromarray(gray > 100).convert("1").save(path)
        return np.repeat(np.where(gray > 100, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        Image.fromarray(gray.astype(np.float32) / 255.0, "F").save(path)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "CMYK":
        Image.new("CMYK", (16, 6), (0, 255, 255, 0)).save(path, quality=95)
        return None
    raise AssertionError(mode)


# grayscale, RGBA, palette and 16-bit PNGs inside a folder dataset: tests/test_bad_input.py
@pytest.mark.parametrize(
    ("mode", "suffix"), [("LA", ".png"), ("P", ".png"), ("1", ".png"), ("F", ".tif"), ("CMYK", ".jpg")]
)
def test_read_image_modes(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"img_{mode}{suffix}"
    expected = _write_mode(path, mode)
    assert Image.open(path).mode == mode or mode == "F"
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (6, 16, 3) and out.flags.c_contiguous
    if expected is not None:
        np.testing.assert_array_equal(out, expected)
    else:  # CMYK (0, 255, 255, 0) is pure red
        assert out[..., 0].min() > 200 and out[..., 1:].max() < 60


def test_read_image_16bit_big_endian(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=">u2")
    im = Image.frombytes("I;16B", (3, 1), values.tobytes())
    path = tmp_path / "be.tif"
    im.save(path)
    out = read_image(path)
    np.testing.assert_array_equal(out[0, :, 1], [0, 100, 255])


def test_read_image_applies_exif_orientation(tmp_path: Path) -> None:
    img = Image.fromarray(_photo(6, 16))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert read_image(path).shape == (16, 6, 3)


# ----------------------------------------------------------------------------- bad input
# Broken, empty, huge and tiny images, bad masks and pairing in a folder: tests/test_bad_input.py
def test_pairing_errors_list_names(suim_root: Path) -> None:
    _save(np.zeros((16, 24, 3), np.uint8), suim_root / "train_val" / "masks" / "orphan_mask.bmp")
    _save(_photo(16, 24), suim_root / "train_val" / "images" / "lonely_image.jpg")
    with pytest.raises(DatasetError) as info:
        SUIM(suim_root, "train_val")
    msg = str(info.value)
    assert "1 image(s)" in msg and "lonely_image.jpg" in msg
    assert "1 mask(s)" in msg and "orphan_mask.bmp" in msg


def test_camvid_like_out_of_range(tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    _save(_photo(4, 4), root / "train" / "a.png")
    _save(np.array([[0, 10, 11, 12]] * 4, np.uint8), root / "trainannot" / "a.png")
    ds = CamVid(root)
    with pytest.raises(DatasetError, match=r"trainannot/a\.png.*12"):
        ds[0]


def test_missing_root_names_path_and_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "camvid"
    with pytest.raises(DatasetError) as info:
        CamVid(missing)
    assert str(missing) in str(info.value) and "dataset.root" in str(info.value)
    for make in (lambda r: SUIM(r), lambda r: CocoStuff27(r), lambda r: ImageFolder(r)):
        with pytest.raises(DatasetError, match="dataset.root"):
            make(missing)


def test_empty_folder_names_folder(tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    (root / "train" / "README.txt").write_text("not an image")
    with pytest.raises(DatasetError) as info:
        CamVid(root)
    assert str(root / "train") in str(info.value) and "dataset.root" in str(info.value)
    (tmp_path / "folder" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"folder/train/images"):
        ImageFolder(tmp_path / "folder")


def test_sample_is_frozen() -> None:
    s = Sample(image=Path("a.png"), mask=None, stem="a")
    with pytest.raises(AttributeError):
        s.stem = "b"  # type: ignore[misc]


# ----------------------------------------------------------------------------- Hydra configs
def _instantiate(name: str, data_dir: Path, **overrides) -> SegmentationDataset:
    cfg = OmegaConf.merge(
        OmegaConf.create({"paths": {"data_dir": str(data_dir)}}),
        {"dataset": OmegaConf.load(CONF_DIR / f"{name}.yaml")},
        {"dataset": overrides},
    )
    return instantiate(cfg.dataset)


CONFIG_CLASSES = {"camvid": CamVid, "suim": SUIM, "cocostuff27": CocoStuff27, "folder": ImageFolder, "demo": DemoImages}


def test_every_config_matches_its_constructor() -> None:
    assert sorted(p.stem for p in CONF_DIR.glob("*.yaml")) == sorted(CONFIG_CLASSES)
    for name, cls in CONFIG_CLASSES.items():
        cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
        assert cfg._target_ == f"datus.data.{cls.__name__}"
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "transform")]
        assert [k for k in cfg if k != "_target_"] == params, name
        assert cls.name == name


def test_config_camvid(camvid_root: Path) -> None:
    ds = _instantiate("camvid", camvid_root.parent)
    assert isinstance(ds, CamVid) and len(ds) == 367 and ds.root == camvid_root


def test_config_suim(suim_root: Path) -> None:
    ds = _instantiate("suim", suim_root.parent)
    assert isinstance(ds, SUIM) and ds.num_classes == 6 and len(ds) == 3
    assert _instantiate("suim", suim_root.parent, classes="fine", split="TEST").num_classes == 8


def test_config_cocostuff27(coco_root: Path) -> None:
    ds = _instantiate("cocostuff27", coco_root.parent)
    assert isinstance(ds, CocoStuff27) and ds.split == "val" and len(ds) == 3


def test_config_folder(tmp_path: Path) -> None:
    _make_folder(tmp_path / "folder")
    ds = _instantiate("folder", tmp_path)
    assert isinstance(ds, ImageFolder) and not ds.has_masks
    _make_folder(tmp_path / "folder", split="val", masks=_index_masks())
    labelled = _instantiate("folder", tmp_path, split="val", num_classes=4, class_names=["a", "b", "c", "d"])
    assert labelled.classes == ("a", "b", "c", "d") and labelled[0]["mask"].dtype == torch.int64


def test_config_demo(tmp_path: Path) -> None:
    ds = _instantiate("demo", tmp_path)
    assert isinstance(ds, DemoImages) and len(ds) >= 5
