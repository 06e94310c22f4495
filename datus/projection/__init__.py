"""Features that cluster: a projection head trained without labels on the frozen features (config group ``head``).

STEGO's correlation distillation (:class:`CorrelationLoss`) on sampled patches of each image, of
its nearest neighbour images and of random images; :class:`Projection` trains the head once per
settings (cached, resumable) and returns the backbone whose outputs carry ``codes``, which
discovery and labelling read like any patch feature (``graph.feature=codes``).
"""

from datus.projection.data import PairedPatches, nearest_images, sample_patches, split_mean
from datus.projection.loss import CorrelationLoss, correlation_term
from datus.projection.module import ProjectionModule
from datus.projection.stage import HeadFileError, Projection, check_codes, load_head, save_head

__all__ = [
    "CorrelationLoss",
    "HeadFileError",
    "PairedPatches",
    "Projection",
    "ProjectionModule",
    "check_codes",
    "correlation_term",
    "load_head",
    "nearest_images",
    "sample_patches",
    "save_head",
    "split_mean",
]
