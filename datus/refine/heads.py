"""Segmentation heads on frozen patch features: ``(B, D, h, w)`` maps in, ``(B, K, h, w)`` logits out.

Named builders (``build_head(name, in_dim=..., num_classes=..., **settings)``), so a checkpoint
rebuilds its head from plain hyperparameters. Logits stay on the patch grid; the module
upsamples them bilinearly to pixels (labels are never interpolated).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_HEADS: dict[str, Callable[..., nn.Module]] = {}


class HeadError(ValueError):
    """A head setting that does not fit the features (dimension, centroids file, ...)."""


def register_head(name: str):
    def add(cls):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered")
        _HEADS[name] = cls
        return cls

    return add


def list_heads() -> list[str]:
    return sorted(_HEADS)


def build_head(name: str, *, in_dim: int, num_classes: int, **settings) -> nn.Module:
    """The head ``name`` for ``in_dim``-channel features and ``num_classes`` outputs."""
    if name not in _HEADS:
        raise HeadError(f"model.head.name={name!r}: choose one of {list_heads()}")
    if num_classes < 2:
        raise HeadError(f"a head needs K >= 2 outputs, got {num_classes}")
    return _HEADS[name](in_dim=int(in_dim), num_classes=int(num_classes), **settings)


def load_centroids(path: str | Path, in_dim: int) -> tuple[Tensor, Tensor | None]:
    """``(K, D)`` centroids and the ``(D,)`` mean k-means subtracted (or None), from discover.py's ``centroids.npz``."""
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"model.head.centroids={path}: no such file (discover.py writes labeling/centroids.npz)")
    with np.load(path, allow_pickle=False) as z:
        if "projection" in z.files:
            raise HeadError(f"model.head.centroids={path}: centroids after PCA cannot start a head; "
                            "use labeling.kmeans.pca_dim=null or model.head.centroids=null")
        centroids = torch.from_numpy(np.asarray(z["centroids"], dtype=np.float32))
        mean = torch.from_numpy(np.asarray(z["mean"], dtype=np.float32)) if "mean" in z.files else None
    if centroids.shape[1] != in_dim:
        raise HeadError(f"model.head.centroids={path} holds {centroids.shape[1]}-d centroids but the features are "
                        f"{in_dim}-d: they come from another backbone or feature (model.features must match "
                        "the graph.segment_feature that discover.py clustered)")
    return centroids, mean


def load_text_embeddings(path: str | Path) -> tuple[Tensor, list[str]]:
    """``(C, E)`` CLIP text embeddings and the class names, from ``method=clip_sam``'s ``text_embeddings.npz``."""
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"model.head.prototypes={path}: no such file (discover.py method=clip_sam writes "
                        "labeling/text_embeddings.npz)")
    with np.load(path, allow_pickle=False) as z:
        if "text_embeddings" not in z.files:
            raise HeadError(f"model.head.prototypes={path} holds no text_embeddings")
        return torch.from_numpy(np.asarray(z["text_embeddings"], dtype=np.float32)), [str(n) for n in z["class_names"]]


@register_head("linear")
class LinearHead(nn.Module):
    """A 1x1 convolution (a linear probe per patch), as PriMaPs-EM: cosine logits when started from centroids.

    With ``centroids`` the weights are the k-means centroids (weight-normalised rows, features
    centred and L2-normalised as k-means saw them, logits scaled by ``1 / temperature``), so the
    head starts where the pseudo labels came from.
    """

    def __init__(self, *, in_dim: int, num_classes: int, centroids: str | None = None,
                 temperature: float = 0.1) -> None:
        super().__init__()
        self.cosine = centroids is not None
        self.temperature = float(temperature)
        self.conv = nn.Conv2d(in_dim, num_classes, 1, bias=not self.cosine)
        self.register_buffer("mean", torch.zeros(in_dim), persistent=True)
        if self.cosine:
            weights, mean = load_centroids(centroids, in_dim)
            if len(weights) != num_classes:
                raise HeadError(f"model.head.centroids={centroids} holds {len(weights)} centroids but K={num_classes}")
            with torch.no_grad():
                self.conv.weight.copy_(weights[:, :, None, None])
                if mean is not None:
                    self.mean.copy_(mean)

    def forward(self, x: Tensor) -> Tensor:
        if not self.cosine:
            return self.conv(x)
        x = F.normalize(x - self.mean[:, None, None], dim=1)
        return F.conv2d(x, F.normalize(self.conv.weight, dim=1)) / self.temperature


@register_head("deeplabv3")
class DeepLabV3Head(nn.Module):
    """torchvision's DeepLabV3 head (ASPP, then 3x3 conv, BN, ReLU, 1x1) on the patch-feature map.

    The paper's refinement network with the self-supervised features instead of a ResNet trained
    from scratch. ``rates`` are in patches: torchvision's (12, 24, 36) are for a stride-8 ResNet
    map and would look past a 32x43 patch grid.
    """

    def __init__(self, *, in_dim: int, num_classes: int, channels: int = 256,
                 rates: tuple[int, ...] = (2, 4, 6), dropout: float = 0.1) -> None:
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP

        aspp = ASPP(in_dim, [int(r) for r in rates], channels)
        aspp.project[-1] = nn.Dropout(float(dropout))
        self.net = nn.Sequential(
            aspp,
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _blocks(dim: int, heads: int, depth: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


@register_head("segmenter")
class SegmenterHead(nn.Module):
    """Segmenter's mask transformer (Strudel et al. 2021): K class embeddings decoded with the patch tokens.

    Patch tokens (projected to ``dim``) and K learned class embeddings go jointly through
    ``depth`` transformer layers; the masks are the scalar products of the L2-normalised patch
    and class embeddings, normalised over the classes (the paper's ``mask_norm``).
    """

    def __init__(self, *, in_dim: int, num_classes: int, dim: int = 128, depth: int = 2, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise HeadError(f"model.head.dim={dim} must be a multiple of model.head.heads={heads}")
        self.num_classes = num_classes
        self.proj = nn.Linear(in_dim, dim)
        self.classes = nn.Parameter(torch.randn(1, num_classes, dim) * 0.02)
        self.blocks = _blocks(dim, heads, depth, dropout)
        self.norm = nn.LayerNorm(dim)
        self.patch_proj = nn.Linear(dim, dim, bias=False)
        self.class_proj = nn.Linear(dim, dim, bias=False)
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, h, w = x.shape
        tokens = torch.cat([self.proj(x.flatten(2).transpose(1, 2)), self.classes.expand(batch, -1, -1)], dim=1)
        tokens = self.norm(self.blocks(tokens))
        patches = F.normalize(self.patch_proj(tokens[:, : h * w]), dim=-1)
        classes = F.normalize(self.class_proj(tokens[:, h * w :]), dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, h*w, K)
        return masks.transpose(1, 2).reshape(batch, self.num_classes, h, w)


@register_head("align_block")
class AlignBlock(nn.Module):
    """The alignment module of annotation-free segmentation (Seifi et al. 2024) with K prototypes.

    One transformer block maps the frozen patch features (centred and L2-normalised as k-means
    saw them, when ``centroids`` is given) into the prototypes' space, plus a residual; logits
    are cosine similarities to the prototypes over ``temperature``. Prototypes start from the
    k-means centroids that discover.py saved (or at random without ``centroids``) and are
    learnt unless ``fixed_prototypes``. ``prototypes`` (a ``text_embeddings.npz`` that
    ``method=clip_sam`` writes) makes it the open-vocabulary module: the prototypes are CLIP's text
    embeddings of the class names, fixed, and a linear map after the block takes the patches into
    their space, so at inference any list of names can be segmented (:meth:`set_prototypes`).
    ``embeddings(x)`` gives the aligned patch embeddings for the patch-to-patch contrastive loss.
    """

    def __init__(self, *, in_dim: int, num_classes: int, centroids: str | None = None, heads: int = 6,
                 temperature: float = 0.1, fixed_prototypes: bool = False, dropout: float = 0.0,
                 prototypes: str | None = None) -> None:
        super().__init__()
        if in_dim % heads:
            raise HeadError(f"model.head.heads={heads} must divide the feature dimension {in_dim}")
        if centroids is not None and prototypes is not None:
            raise HeadError("model.head.centroids and model.head.prototypes both start the prototypes: set one")
        self.temperature = float(temperature)
        self.register_buffer("mean", torch.zeros(in_dim), persistent=True)
        prototypes_dim = in_dim
        if prototypes is not None:
            text, names = load_text_embeddings(prototypes)
            if len(text) != num_classes:
                raise HeadError(f"model.head.prototypes={prototypes} names {len(text)} classes but K={num_classes}")
            prototypes_dim, fixed_prototypes = text.shape[1], True
            self.class_names = names
        #: patches -> the text embeddings' space (open vocabulary); identity otherwise
        self.to_prototypes = nn.Linear(in_dim, prototypes_dim) if prototypes is not None else nn.Identity()
        initial = torch.randn(num_classes, in_dim) * in_dim**-0.5
        if prototypes is not None:
            initial = text
        elif centroids is not None:
            initial, mean = load_centroids(centroids, in_dim)
            if len(initial) != num_classes:
                raise HeadError(f"model.head.centroids={centroids} holds {len(initial)} centroids but K={num_classes}")
            if mean is not None:
                self.mean.copy_(mean)
        self.prototypes = nn.Parameter(initial.clone(), requires_grad=not fixed_prototypes)
        self.block = _blocks(in_dim, heads, 1, dropout)

    def embeddings(self, x: Tensor) -> Tensor:
        """``(B, h*w, D)`` L2-normalised aligned patch embeddings."""
        tokens = F.normalize(x - self.mean[:, None, None], dim=1).flatten(2).transpose(1, 2)
        return F.normalize(self.to_prototypes(self.block(tokens)), dim=-1)

    @property
    def open_vocabulary(self) -> bool:
        """Whether the prototypes are text embeddings (built with ``prototypes``): any names can be set."""
        return isinstance(self.to_prototypes, nn.Linear)

    def set_prototypes(self, embeddings: Tensor) -> None:
        """Segment other classes: ``(C, E)`` text embeddings of any list of names (zero-shot; E fixed)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.prototypes.shape[1]:
            raise HeadError(f"prototypes of shape {tuple(embeddings.shape)} do not fit this head's "
                            f"{self.prototypes.shape[1]}-d prototype space")
        self.prototypes = nn.Parameter(embeddings.float().clone(), requires_grad=False)

    def logits_of(self, embeddings: Tensor, grid: tuple[int, int]) -> Tensor:
        logits = embeddings @ F.normalize(self.prototypes, dim=-1).T / self.temperature  # (B, h*w, K)
        return logits.transpose(1, 2).reshape(len(embeddings), -1, *grid)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_of(self.embeddings(x), tuple(x.shape[-2:]))
