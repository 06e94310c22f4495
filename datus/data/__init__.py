"""Datasets and image I/O for datus (usable without Hydra).

Every dataset returns items ``{"image": uint8 (3, H, W) RGB, "mask": int64 (H, W)
with 255 = void (labelled splits only), "stem": str, "index": int}``.
"""

from datus.data.base import SegmentationDataset
from datus.data.camvid import CAMVID_CLASSES, CamVid
from datus.data.cocostuff import (
    COCOSTUFF27_CLASSES,
    COCOSTUFF_FINE_TO_COARSE,
    CocoStuff27,
)
from datus.data.demo import DemoImages
from datus.data.errors import DatasetError, ImageReadError, MaskError
from datus.data.files import list_images, pair_samples
from datus.data.folder import ImageFolder
from datus.data.io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, read_image
from datus.data.safe import SkipUnreadable
from datus.data.sample import Sample
from datus.data.suim import SUIM, SUIM_COARSE_CLASSES, SUIM_FINE_CLASSES

__all__ = [
    "CAMVID_CLASSES",
    "COCOSTUFF27_CLASSES",
    "COCOSTUFF_FINE_TO_COARSE",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SUIM",
    "SUIM_COARSE_CLASSES",
    "SUIM_FINE_CLASSES",
    "CamVid",
    "CocoStuff27",
    "DatasetError",
    "DemoImages",
    "ImageFolder",
    "ImageReadError",
    "MaskError",
    "Sample",
    "SegmentationDataset",
    "SkipUnreadable",
    "list_images",
    "pair_samples",
    "read_image",
]
