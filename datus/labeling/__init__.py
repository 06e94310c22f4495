"""Pseudo-labelling (DatUS² steps 4-6): segment features, k-means, initial pseudo masks."""

from datus.labeling.embed import SegmentEmbedder, segment_crops
from datus.labeling.kmeans import KMeans
from datus.labeling.labeler import Labeler
from datus.labeling.run import label_patches, run_labeling

__all__ = [
    "KMeans",
    "Labeler",
    "SegmentEmbedder",
    "label_patches",
    "run_labeling",
    "segment_crops",
]
