"""DeepLabV3 refinement network (torchvision), initialised without supervised ImageNet weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from datus.backbones.weights import WeightsError, clean_state_dict, read_checkpoint

_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def _register(name: str):
    def add(fn):
        _ARCHS[name] = fn
        return fn

    return add


@_register("deeplabv3_resnet50")
def _resnet50(num_classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


@_register("deeplabv3_mobilenet_v3_large")
def _mobilenet(num_classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    return deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


def list_models() -> list[str]:
    return sorted(_ARCHS)


def build_segmenter(arch: str, num_classes: int, backbone_weights: str | Path | None = None) -> nn.Module:
    """A DeepLabV3 with ``num_classes`` outputs; its backbone random or from a local checkpoint.

    ``backbone_weights`` may be e.g. the official MoCo v2 ResNet-50 checkpoint (its prefixes and
    head are handled as in the backbone registry), read with ``weights_only=True``. Supervised
    ImageNet weights are deliberately not offered as a default: the task is unsupervised.
    """
    if arch not in _ARCHS:
        raise ValueError(f"model.arch={arch!r}: choose one of {list_models()}")
    if num_classes < 2:
        raise ValueError(f"the segmenter needs K >= 2 outputs, got {num_classes}")
    model = _ARCHS[arch](num_classes)
    if backbone_weights:
        state = clean_state_dict(read_checkpoint(backbone_weights))
        result = model.backbone.load_state_dict(state, strict=False)
        loaded = len(state) - len(result.unexpected_keys)
        if loaded == 0 or result.missing_keys:
            raise WeightsError(
                f"model.backbone_weights={backbone_weights} does not fit {arch}'s backbone: "
                f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    return model
