"""Refinement (DatUS² step 7): a network trained on the pseudo masks de-noises them.

Heads on the frozen backbone's cached features (:class:`HeadModule`, the default) or a DeepLabV3
trained on the images (:class:`RefineModule`, for GPUs).
"""

from datus.refine.data import PairedMasks, PseudoMaskDataModule, PseudoMaskError
from datus.refine.head_module import HeadModule
from datus.refine.heads import HeadError, build_head, list_heads, register_head
from datus.refine.load import load_refiner
from datus.refine.model import build_segmenter, list_models
from datus.refine.module import RefineModule
from datus.refine.predict import predict_split, write_predictions
from datus.refine.run import run_refinement

__all__ = [
    "HeadError",
    "HeadModule",
    "PairedMasks",
    "PseudoMaskDataModule",
    "PseudoMaskError",
    "RefineModule",
    "build_head",
    "build_segmenter",
    "list_heads",
    "list_models",
    "load_refiner",
    "predict_split",
    "register_head",
    "run_refinement",
    "write_predictions",
]
