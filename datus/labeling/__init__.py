"""Pseudo-labelling (DatUS² steps 4-6): segment features, k-means, initial pseudo masks."""

from datus.labeling.embed import PatchTokens, SegmentEmbedder, segment_crops
from datus.labeling.kmeans import KMeans
from datus.labeling.masks import UNLABELLED, palette, patch_labels, upsample_labels
from datus.labeling.run import label_patches, run_labeling, write_pseudo_masks
from datus.labeling.store import ArrayLookup, ArrayStore, ArrayWriter, predict_missing

__all__ = [
    "UNLABELLED",
    "ArrayLookup",
    "ArrayStore",
    "ArrayWriter",
    "KMeans",
    "PatchTokens",
    "SegmentEmbedder",
    "label_patches",
    "palette",
    "patch_labels",
    "predict_missing",
    "run_labeling",
    "segment_crops",
    "upsample_labels",
    "write_pseudo_masks",
]
