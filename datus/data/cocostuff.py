"""COCO-Stuff with the 27 coarse classes used by PiCIE / STEGO (and DatUS).

Layout: ``root/images/<split>2017/*.jpg`` and ``root/annotations/<split>2017/*.png``
(the official ``stuffthingmaps``: pixel value = COCO category id - 1, 255 = unlabelled).
Fine ids are mapped to their supercategory; the table below is readable on
purpose and is checked in the tests against STEGO's ``fine_to_coarse`` dict.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datus.data.base import SegmentationDataset, Transform
from datus.data.errors import DatasetError
from datus.data.files import format_names, list_images, pair_samples, require_dir
from datus.data.io import IMAGE_EXTENSIONS, to_index_map
from datus.data.sample import Sample

__all__ = ["COCOSTUFF27_CLASSES", "COCOSTUFF_FINE", "COCOSTUFF_FINE_TO_COARSE", "CocoStuff27"]

#: The 27 coarse classes in STEGO / PiCIE order (12 "thing" then 15 "stuff" supercategories).
COCOSTUFF27_CLASSES: tuple[str, ...] = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory",
    "animal", "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall",
    "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)  # fmt: skip

#: COCO-Stuff category id -> (name, supercategory). Ids 1..91 are things (names in
#: brackets are the 11 ids defined in the COCO paper but never annotated), 92..182 stuff.
#: Deviations from a naive reading of the cocostuff hierarchy follow STEGO on purpose:
#: ``rug`` is textile and ``tent`` is building (as in cocostuff's own hierarchy file).
COCOSTUFF_FINE: dict[int, tuple[str, str]] = {
    1: ("person", "person"),
    2: ("bicycle", "vehicle"), 3: ("car", "vehicle"), 4: ("motorcycle", "vehicle"), 5: ("airplane", "vehicle"),
    6: ("bus", "vehicle"), 7: ("train", "vehicle"), 8: ("truck", "vehicle"), 9: ("boat", "vehicle"),
    10: ("traffic light", "outdoor"), 11: ("fire hydrant", "outdoor"), 12: ("[street sign]", "outdoor"),
    13: ("stop sign", "outdoor"), 14: ("parking meter", "outdoor"), 15: ("bench", "outdoor"),
    16: ("bird", "animal"), 17: ("cat", "animal"), 18: ("dog", "animal"), 19: ("horse", "animal"),
    20: ("sheep", "animal"), 21: ("cow", "animal"), 22: ("elephant", "animal"), 23: ("bear", "animal"),
    24: ("zebra", "animal"), 25: ("giraffe", "animal"),
    26: ("[hat]", "accessory"), 27: ("backpack", "accessory"), 28: ("umbrella", "accessory"),
    29: ("[shoe]", "accessory"), 30: ("[eye glasses]", "accessory"), 31: ("handbag", "accessory"),
    32: ("tie", "accessory"), 33: ("suitcase", "accessory"),
    34: ("frisbee", "sports"), 35: ("skis", "sports"), 36: ("snowboard", "sports"), 37: ("sports ball", "sports"),
    38: ("kite", "sports"), 39: ("baseball bat", "sports"), 40: ("baseball glove", "sports"),
    41: ("skateboard", "sports"), 42: ("surfboard", "sports"), 43: ("tennis racket", "sports"),
    44: ("bottle", "kitchen"), 45: ("[plate]", "kitchen"), 46: ("wine glass", "kitchen"), 47: ("cup", "kitchen"),
    48: ("fork", "kitchen"), 49: ("knife", "kitchen"), 50: ("spoon", "kitchen"), 51: ("bowl", "kitchen"),
    52: ("banana", "food"), 53: ("apple", "food"), 54: ("sandwich", "food"), 55: ("orange", "food"),
    56: ("broccoli", "food"), 57: ("carrot", "food"), 58: ("hot dog", "food"), 59: ("pizza", "food"),
    60: ("donut", "food"), 61: ("cake", "food"),
    62: ("chair", "furniture"), 63: ("couch", "furniture"), 64: ("potted plant", "furniture"),
    65: ("bed", "furniture"), 66: ("[mirror]", "furniture"), 67: ("dining table", "furniture"),
    68: ("[window]", "furniture"), 69: ("[desk]", "furniture"), 70: ("toilet", "furniture"),
    71: ("[door]", "furniture"),
    72: ("tv", "electronic"), 73: ("laptop", "electronic"), 74: ("mouse", "electronic"),
    75: ("remote", "electronic"), 76: ("keyboard", "electronic"), 77: ("cell phone", "electronic"),
    78: ("microwave", "appliance"), 79: ("oven", "appliance"), 80: ("toaster", "appliance"),
    81: ("sink", "appliance"), 82: ("refrigerator", "appliance"), 83: ("[blender]", "appliance"),
    84: ("book", "indoor"), 85: ("clock", "indoor"), 86: ("vase", "indoor"), 87: ("scissors", "indoor"),
    88: ("teddy bear", "indoor"), 89: ("hair drier", "indoor"), 90: ("toothbrush", "indoor"),
    91: ("[hair brush]", "indoor"),
    92: ("banner", "textile"), 93: ("blanket", "textile"), 94: ("branch", "plant"), 95: ("bridge", "building"),
    96: ("building-other", "building"), 97: ("bush", "plant"), 98: ("cabinet", "furniture-stuff"),
    99: ("cage", "structural"), 100: ("cardboard", "rawmaterial"), 101: ("carpet", "floor"),
    102: ("ceiling-other", "ceiling"), 103: ("ceiling-tile", "ceiling"), 104: ("cloth", "textile"),
    105: ("clothes", "textile"), 106: ("clouds", "sky"), 107: ("counter", "furniture-stuff"),
    108: ("cupboard", "furniture-stuff"), 109: ("curtain", "textile"), 110: ("desk-stuff", "furniture-stuff"),
    111: ("dirt", "ground"), 112: ("door-stuff", "furniture-stuff"), 113: ("fence", "structural"),
    114: ("floor-marble", "floor"), 115: ("floor-other", "floor"), 116: ("floor-stone", "floor"),
    117: ("floor-tile", "floor"), 118: ("floor-wood", "floor"), 119: ("flower", "plant"), 120: ("fog", "water"),
    121: ("food-other", "food-stuff"), 122: ("fruit", "food-stuff"), 123: ("furniture-other", "furniture-stuff"),
    124: ("grass", "plant"), 125: ("gravel", "ground"), 126: ("ground-other", "ground"), 127: ("hill", "solid"),
    128: ("house", "building"), 129: ("leaves", "plant"), 130: ("light", "furniture-stuff"),
    131: ("mat", "textile"), 132: ("metal", "rawmaterial"), 133: ("mirror-stuff", "furniture-stuff"),
    134: ("moss", "plant"), 135: ("mountain", "solid"), 136: ("mud", "ground"), 137: ("napkin", "textile"),
    138: ("net", "structural"), 139: ("paper", "rawmaterial"), 140: ("pavement", "ground"),
    141: ("pillow", "textile"), 142: ("plant-other", "plant"), 143: ("plastic", "rawmaterial"),
    144: ("platform", "ground"), 145: ("playingfield", "ground"), 146: ("railing", "structural"),
    147: ("railroad", "ground"), 148: ("river", "water"), 149: ("road", "ground"), 150: ("rock", "solid"),
    151: ("roof", "building"), 152: ("rug", "textile"), 153: ("salad", "food-stuff"), 154: ("sand", "ground"),
    155: ("sea", "water"), 156: ("shelf", "furniture-stuff"), 157: ("sky-other", "sky"),
    158: ("skyscraper", "building"), 159: ("snow", "ground"), 160: ("solid-other", "solid"),
    161: ("stairs", "furniture-stuff"), 162: ("stone", "solid"), 163: ("straw", "plant"),
    164: ("structural-other", "structural"), 165: ("table", "furniture-stuff"), 166: ("tent", "building"),
    167: ("textile-other", "textile"), 168: ("towel", "textile"), 169: ("tree", "plant"),
    170: ("vegetable", "food-stuff"), 171: ("wall-brick", "wall"), 172: ("wall-concrete", "wall"),
    173: ("wall-other", "wall"), 174: ("wall-panel", "wall"), 175: ("wall-stone", "wall"),
    176: ("wall-tile", "wall"), 177: ("wall-wood", "wall"), 178: ("water-other", "water"),
    179: ("waterdrops", "water"), 180: ("window-blind", "window"), 181: ("window-other", "window"),
    182: ("wood", "solid"),
}  # fmt: skip


def _build_lut() -> np.ndarray:
    """256-entry uint8 table: stuffthingmap pixel value (id - 1) -> coarse index; 255 stays 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    for cat_id, (_, supercategory) in COCOSTUFF_FINE.items():
        lut[cat_id - 1] = COCOSTUFF27_CLASSES.index(supercategory)
    return lut


#: Pixel value (0..181, 255) -> coarse class index (0..26, 255).
COCOSTUFF_FINE_TO_COARSE: np.ndarray = _build_lut()
COCOSTUFF_FINE_TO_COARSE.setflags(write=False)

_SPLITS = ("train", "val")


def _read_image_list(path: Path) -> list[str]:
    """Stems listed one per line (file names accepted; blank lines and ``#`` comments skipped)."""
    stems = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = Path(line).name
        stems.append(Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name)
    return stems


class CocoStuff27(SegmentationDataset):
    """COCO-Stuff-164k mapped to 27 classes; ``image_list`` restricts to a curated subset."""

    name = "cocostuff27"
    things = COCOSTUFF27_CLASSES[:12]

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        image_list: str | os.PathLike[str] | None = None,
        transform: Transform | None = None,
        mask_size_mismatch: str = "error", exif: str = "error",
    ) -> None:
        if split not in _SPLITS:
            raise DatasetError(f"dataset.split={split!r} is not a COCO-Stuff split; use one of {', '.join(_SPLITS)}")
        self.image_list = None if image_list is None else self._resolve_list(Path(root).expanduser(), split, image_list)
        super().__init__(root, split, COCOSTUFF27_CLASSES, transform, mask_size_mismatch=mask_size_mismatch, exif=exif)

    @staticmethod
    def _resolve_list(root: Path, split: str, image_list: str | os.PathLike[str]) -> Path:
        """Find the list as given, else under ``root/curated/<split>2017/`` (STEGO layout), else under root."""
        given = Path(image_list).expanduser()
        candidates = [given]
        if not given.is_absolute():
            candidates += [root / "curated" / f"{split}2017" / given, root / given]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        tried = ", ".join(str(c) for c in candidates)
        raise DatasetError(f"dataset.image_list={image_list} not found (tried {tried})")

    def _find_samples(self) -> list[Sample]:
        root = require_dir(self.root, "dataset.root")
        image_dir = root / "images" / f"{self.split}2017"
        mask_dir = root / "annotations" / f"{self.split}2017"
        images = list_images(image_dir, what=f"COCO {self.split}2017 images", ignored=self.ignored_files)
        masks = list_images(mask_dir, what=f"COCO-Stuff {self.split}2017 stuffthingmaps", ignored=self.ignored_files)
        if self.image_list is not None:
            wanted = _read_image_list(self.image_list)
            if not wanted:
                raise DatasetError(f"dataset.image_list={self.image_list} lists no images")
            missing = [s for s in wanted if s not in images]
            if missing:
                raise DatasetError(
                    f"{len(missing)} of {len(wanted)} images listed in dataset.image_list={self.image_list} "
                    f"are not in {image_dir}: {format_names(missing)}"
                )
            keep = set(wanted)
            images = {s: p for s, p in images.items() if s in keep}
            masks = {s: p for s, p in masks.items() if s in keep}
        return pair_samples(images, masks, image_dir, mask_dir)

    def _decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        fine = to_index_map(raw, path)
        if fine.dtype != np.uint8:
            big = fine[(fine > 255) | (fine < 0)] if fine.size else fine
            if big.size:
                raise DatasetError(f"mask {path} has values {np.unique(big)[:10].tolist()} outside 0..255")
            fine = fine.astype(np.uint8)
        unknown = fine[(fine > 181) & (fine != 255)]
        if unknown.size:
            raise DatasetError(
                f"mask {path} has values {np.unique(unknown)[:10].tolist()} that are not COCO-Stuff "
                "stuffthingmap values (0..181 = category id - 1, 255 = unlabelled)"
            )
        return COCOSTUFF_FINE_TO_COARSE[fine].astype(np.int64)
