"""Frozen self-supervised backbones behind one interface (see :class:`Backbone`)."""

from datus.backbones.base import (
    PATCH_FEATURES,
    Backbone,
    BackboneError,
    BackboneOutput,
)
from datus.backbones.projected import ProjectedBackbone, ProjectionHead
from datus.backbones.registry import (
    WEIGHT_CHOICES,
    BackboneSpec,
    build_backbone,
    get_backbone_spec,
    list_backbones,
    register_backbone,
)
from datus.backbones.weights import WeightsError

__all__ = [
    "PATCH_FEATURES",
    "WEIGHT_CHOICES",
    "Backbone",
    "BackboneError",
    "BackboneOutput",
    "BackboneSpec",
    "ProjectedBackbone",
    "ProjectionHead",
    "WeightsError",
    "build_backbone",
    "get_backbone_spec",
    "list_backbones",
    "register_backbone",
]
