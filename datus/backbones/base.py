"""What every backbone returns, and the contract it keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: Names of the per-patch features a backbone may return (see :class:`BackboneOutput`).
PATCH_FEATURES = ("keys", "queries", "values", "tokens", "codes")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """A backbone was asked for something it cannot do (bad input size, unknown feature, ...)."""


@dataclass
class BackboneOutput:
    """Features of one batch, all on the patch grid of shape ``grid = (h, w)``.

    Per-patch tensors are ``(B, h*w, D)`` in row-major grid order; ``keys``, ``queries`` and
    ``values`` are the last block's attention projections with heads concatenated (the DatUS²
    paper uses the keys); ``tokens`` are the final normalised output tokens. ``attentions``
    is the last block's attention of the CLS token to every patch, ``(B, heads, h*w)``.
    A CNN has no attention: its ``keys``/``queries``/``values``/``attentions`` are ``None``.
    """

    tokens: Tensor
    cls: Tensor
    grid: tuple[int, int]
    keys: Tensor | None = None
    queries: Tensor | None = None
    values: Tensor | None = None
    attentions: Tensor | None = None
    #: normalised output tokens of earlier blocks, ``(B, h*w, D)`` by block index (see ``blocks=``)
    hidden: dict[int, Tensor] | None = None
    #: a trained projection head's output (``feature_head=stego``; :class:`datus.backbones.ProjectedBackbone`)
    codes: Tensor | None = None

    def features(self, name: str) -> Tensor:
        """The per-patch feature called ``name`` (one of :data:`PATCH_FEATURES`)."""
        if name not in PATCH_FEATURES:
            raise BackboneError(f"unknown patch feature {name!r}; choose one of {PATCH_FEATURES}")
        value = getattr(self, name)
        if value is None and name == "codes":
            raise BackboneError("'codes' are a projection head's output: set feature_head=stego (or pick another "
                                "graph.feature / graph.segment_feature)")
        if value is None:
            raise BackboneError(
                f"this backbone has no {name!r} (a CNN has no attention); use 'tokens' instead"
            )
        return value

    def feature_map(self, name: str) -> Tensor:
        """The per-patch feature ``name`` as a ``(B, D, h, w)`` map."""
        x = self.features(name)
        h, w = self.grid
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class Backbone(nn.Module):
    """A frozen feature extractor with a fixed patch size (a CNN's output stride).

    Subclasses set ``name``, ``patch_size``, ``embed_dim``, ``mean`` and ``std`` and implement
    :meth:`extract`; images go in normalised (see :meth:`normalize`) with height and width
    multiples of ``patch_size``.
    """

    name: str
    patch_size: int
    embed_dim: int
    num_heads: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def normalize(self, images: Tensor) -> Tensor:
        """Map RGB images in ``[0, 1]`` (float) or ``[0, 255]`` (uint8) to the model's input scale."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def check_input(self, images: Tensor) -> tuple[int, int]:
        """Validate a ``(B, 3, H, W)`` batch and return its patch grid ``(H/p, W/p)``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise BackboneError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        p = self.patch_size
        if height % p or width % p or height < p or width < p:
            raise BackboneError(
                f"{self.name}: image size {height}x{width} is not a positive multiple of the "
                f"patch size {p}; resize to e.g. {max(p, height // p * p)}x{max(p, width // p * p)}"
            )
        return height // p, width // p

    def key_bias(self) -> Tensor | None:
        """Bias of the last block's key projection (ViTs), or ``None``.

        On DINOv2 it dominates the keys (every key dot product is positive), which is why
        the scene-decomposition graph can subtract it (``graph.affinity.debias``).
        """
        return None

    #: number of blocks whose tokens ``blocks=`` can return (0: none, e.g. a CNN)
    depth: int = 0

    def block_indices(self, blocks: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        """``blocks`` (negative counts from the end, -1 = last) as indices in ``range(depth)``."""
        out = []
        for block in blocks:
            index = int(block) + self.depth if int(block) < 0 else int(block)
            if not 0 <= index < self.depth:
                raise BackboneError(f"{self.name} has {self.depth} blocks: block {block} does not exist")
            out.append(index)
        return tuple(out)

    def extract(self, images: Tensor, blocks: tuple[int, ...] = ()) -> BackboneOutput:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: Tensor, blocks: tuple[int, ...] = ()) -> BackboneOutput:
        """Features of ``images``; ``blocks`` also returns those blocks' tokens in ``hidden``."""
        return self.extract(images, blocks)
