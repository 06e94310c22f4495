"""Refinement (DatUS² step 7): a DeepLabV3 trained on the pseudo masks de-noises them."""

from datus.refine.callbacks import RandomStateCheckpoint
from datus.refine.data import PairedMasks, PseudoMaskDataModule, PseudoMaskError
from datus.refine.model import build_segmenter, list_models
from datus.refine.module import RefineModule
from datus.refine.predict import predict_split

__all__ = [
    "PairedMasks",
    "PseudoMaskDataModule",
    "PseudoMaskError",
    "RandomStateCheckpoint",
    "RefineModule",
    "build_segmenter",
    "list_models",
    "predict_split",
]
