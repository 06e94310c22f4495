"""Refinement (DatUS² step 7): a network trained on the pseudo masks de-noises them.

Heads on the frozen backbone's cached features (:class:`HeadModule`, the default) or a DeepLabV3
trained on the images (:class:`RefineModule`, for GPUs).
"""

from datus.refine.callbacks import RandomStateCheckpoint
from datus.refine.data import PairedMasks, PseudoMaskDataModule, PseudoMaskError
from datus.refine.features import FeatureCache, FeatureSpec, FeatureStore
from datus.refine.head_module import HeadModule
from datus.refine.heads import HeadError, build_head, list_heads, register_head
from datus.refine.load import load_refiner
from datus.refine.model import build_segmenter, list_models
from datus.refine.module import RefineModule
from datus.refine.predict import predict_split, write_predictions

__all__ = [
    "FeatureCache",
    "FeatureSpec",
    "FeatureStore",
    "HeadError",
    "HeadModule",
    "build_head",
    "list_heads",
    "load_refiner",
    "register_head",
    "write_predictions",
    "PairedMasks",
    "PseudoMaskDataModule",
    "PseudoMaskError",
    "RandomStateCheckpoint",
    "RefineModule",
    "build_segmenter",
    "list_models",
    "predict_split",
]
