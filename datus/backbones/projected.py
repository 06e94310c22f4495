"""A frozen backbone followed by a trained projection head: its outputs also carry ``codes``.

The head (:class:`ProjectionHead`, STEGO's linear + MLP on 1x1 positions) is trained without
labels so that patches of one semantic class get similar codes (:mod:`datus.projection`);
discovery and labelling then read ``codes`` like any other patch feature (``graph.feature``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from datus.backbones.base import Backbone, BackboneError, BackboneOutput

__all__ = ["ProjectedBackbone", "ProjectionHead"]


class ProjectionHead(nn.Module):
    """``codes = linear(x - center) + mlp(x - center)`` per patch (STEGO's segmentation head).

    ``center`` (the split's mean input feature, a buffer) makes correlations of raw keys, which
    share a large bias on DINOv2, informative; it is part of the saved head.
    """

    def __init__(self, *, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"head: in_dim={in_dim} and out_dim={out_dim} must be >= 1")
        hidden = int(hidden_dim or in_dim)
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.register_buffer("center", torch.zeros(in_dim))
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim)`` features -> ``(..., out_dim)`` codes."""
        if x.shape[-1] != self.in_dim:
            raise BackboneError(f"the projection head expects {self.in_dim}-channel features, got {x.shape[-1]}")
        x = x - self.center.to(x.dtype)
        return self.linear(x) + self.mlp(x)


class ProjectedBackbone(Backbone):
    """``backbone`` whose :class:`BackboneOutput` also holds ``codes = head(features)``.

    ``features`` names the backbone outputs the head reads (``("keys",)`` by default), ``blocks`` adds the
    output tokens of earlier blocks (negative: from the end), all concatenated in that order.
    Everything else (name, patch size, normalisation, key bias) is the wrapped backbone's.
    """

    def __init__(self, backbone: Backbone, head: ProjectionHead, *, features: Sequence[str] = ("keys",),
                 blocks: Sequence[int] = ()) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head.eval()
        self.input_features = tuple(features)
        self.input_blocks = backbone.block_indices(tuple(blocks))
        for name in ("name", "patch_size", "embed_dim", "num_heads", "mean", "std", "depth"):
            setattr(self, name, getattr(backbone, name))
        for p in self.head.parameters():
            p.requires_grad_(False)

    def key_bias(self) -> Tensor | None:
        return self.backbone.key_bias()

    def extract(self, images: Tensor, blocks: tuple[int, ...] = ()) -> BackboneOutput:
        out = self.backbone.extract(images, tuple(sorted(set(self.backbone.block_indices(blocks)) |
                                                         set(self.input_blocks))))
        parts = [out.features(name) for name in self.input_features] + [out.hidden[i] for i in self.input_blocks]
        x = torch.cat(parts, dim=-1)
        out.codes = self.head(x.float())
        return out
