"""Vision-transformer backbones (DINO, DINOv2) on top of timm's ``VisionTransformer``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from datus.backbones.base import Backbone, BackboneOutput


def resample_pos_embed(patch_pos: Tensor, grid: tuple[int, int], antialias: bool = False) -> Tensor:
    """Resize ``(1, n*n, D)`` patch position embeddings to ``grid`` (bicubic, size-based).

    Without antialiasing by default: that is what the official DINO/DINOv2 code and Hugging
    Face's ``Dinov2Model`` do, so features match theirs; timm's own default antialiases.
    """
    n_old = patch_pos.shape[1]
    side = int(round(n_old**0.5))
    if side * side != n_old:
        raise ValueError(f"position embeddings of {n_old} tokens are not a square grid")
    if (side, side) == tuple(grid):
        return patch_pos
    dim = patch_pos.shape[-1]
    x = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    x = F.interpolate(
        x.float(), size=tuple(grid), mode="bicubic", align_corners=False, antialias=antialias
    )
    return x.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


class ViTBackbone(Backbone):
    """A frozen timm ViT returning the last block's q/k/v, output tokens, CLS and CLS attention.

    Any image size that is a multiple of the patch size works: position embeddings are
    interpolated to the patch grid. One forward hook on the last block's ``qkv`` projection
    is registered at construction (never per image).
    """

    def __init__(
        self,
        model: VisionTransformer,
        name: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        pos_antialias: bool = False,
    ) -> None:
        super().__init__()
        if model.cls_token is None:
            raise ValueError(f"{name}: a ViT backbone needs a CLS token")
        self.model = model
        self.name = name
        self.mean, self.std = tuple(mean), tuple(std)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.embed_dim = int(model.embed_dim)
        attn = model.blocks[-1].attn
        self.num_heads = int(attn.num_heads)
        self.depth = len(model.blocks)
        self.pos_antialias = pos_antialias
        self._qkv: Tensor | None = None
        self._hook = attn.qkv.register_forward_hook(self._keep_qkv)

    def key_bias(self) -> Tensor | None:
        bias = self.model.blocks[-1].attn.qkv.bias
        if bias is None:
            return None
        return bias[self.embed_dim : 2 * self.embed_dim].detach()

    def _keep_qkv(self, _module, _inputs, output: Tensor) -> None:
        self._qkv = output

    def _embed(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        vit = self.model
        x = vit.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (B, h*w, D)
        x = vit.patch_embed.norm(x)
        batch = x.shape[0]
        cls = vit.cls_token.expand(batch, -1, -1)
        regs = [] if vit.reg_token is None else [vit.reg_token.expand(batch, -1, -1)]
        pos = vit.pos_embed
        if vit.no_embed_class:
            x = x + resample_pos_embed(pos, grid, self.pos_antialias)
            x = torch.cat([cls, *regs, x], dim=1)
        else:
            n_prefix = vit.num_prefix_tokens
            patch_pos = resample_pos_embed(pos[:, n_prefix:], grid, self.pos_antialias)
            pos = torch.cat([pos[:, :n_prefix], patch_pos], dim=1)
            x = torch.cat([cls, *regs, x], dim=1) + pos
        return vit.norm_pre(vit.pos_drop(x))

    def extract(self, images: Tensor, blocks: tuple[int, ...] = ()) -> BackboneOutput:
        grid = self.check_input(images)
        vit = self.model
        wanted = self.block_indices(blocks)
        x = self._embed(images, grid)
        kept: dict[int, Tensor] = {}
        for index, block in enumerate(vit.blocks):
            x = block(x)
            if index in wanted:
                kept[index] = x
        x = vit.norm(x)
        qkv, self._qkv = self._qkv, None
        if qkv is None:  # pragma: no cover - would mean timm changed its attention module
            raise RuntimeError(f"{self.name}: the qkv hook did not fire")

        batch, n_tokens, _ = x.shape
        heads = self.num_heads
        q, k, v = qkv.reshape(batch, n_tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = vit.blocks[-1].attn
        q, k = attn.q_norm(q), attn.k_norm(k)  # (B, heads, T, d)
        cls_scores = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, heads, 1, T)
        cls_attention = cls_scores.softmax(dim=-1)[:, :, 0]

        first = vit.num_prefix_tokens

        def per_patch(t: Tensor) -> Tensor:  # (B, heads, T, d) -> (B, h*w, heads*d)
            return t[:, :, first:].transpose(1, 2).reshape(batch, n_tokens - first, -1)

        return BackboneOutput(
            tokens=x[:, first:],
            cls=x[:, 0],
            grid=grid,
            keys=per_patch(k),
            queries=per_patch(q),
            values=per_patch(v),
            attentions=cls_attention[:, :, first:],
            hidden={i: vit.norm(t)[:, first:] for i, t in kept.items()} or None,
        )
