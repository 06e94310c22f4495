"""W-Net as DatUS²'s scene decomposition (``graph=wnet``): its K-way segmentation instead of Louvain's communities."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datus.discovery import Decomposition, SceneDecomposer
from datus.io import file_digest
from datus.wnet.data import resize_image
from datus.wnet.stage import WNetTraining

__all__ = ["WNetDecomposer"]


class WNetDecomposer(SceneDecomposer):
    """Each image's W-Net memberships, averaged over every patch, give each patch a W-Net class;
    those classes play Louvain's communities: connected regions, valid segments (more than
    ``min_patches`` patches) and their mean ``segment_feature`` follow as in DatUS².

    The W-Net is trained on the split first (:meth:`prepare`, cached like ``method=wnet``'s, with
    the same K), so the segments depend on its file: :meth:`cache_key` names its digest.
    """

    needs_image = True

    def __init__(self, *, wnet: WNetTraining, feature: str = "keys", segment_feature: str = "keys",
                 min_patches: int = 5, connectivity: int = 8) -> None:
        super().__init__(affinity=None, louvain=None, feature=feature, min_patches=min_patches,
                         connectivity=connectivity, segment_feature=segment_feature)
        self.wnet = wnet
        self.model = None
        self._digest: str | None = None

    @property
    def needs_key_bias(self) -> bool:
        return False

    def check(self, *, k: int) -> None:
        self.wnet.check(k)

    def prepare(self, dataset, *, cache_root, k: int) -> dict[str, Any]:
        self.model = self.wnet.prepare(dataset, cache_root=cache_root, k=k)
        self._digest = file_digest(self.wnet.report["path"])
        return {"wnet": self.wnet.summary()}

    def cache_key(self) -> dict:
        if self._digest is None:
            raise RuntimeError("WNetDecomposer.cache_key before prepare")
        return {"wnet_file": self._digest}

    @torch.no_grad()
    def classes(self, image: Tensor, grid: tuple[int, int]) -> Tensor:
        """``(h, w)`` W-Net class of each patch of a ``(3, H, W)`` uint8 image on an ``(h, w)`` grid."""
        if self.model is None:
            raise RuntimeError("WNetDecomposer: call prepare() first (it trains or loads the W-Net)")
        model = self.model.to(image.device).eval()
        x = resize_image(image.cpu(), self.wnet.input_size).to(image.device).float()[None] / 255.0
        probs = model.segment(x)
        return F.adaptive_avg_pool2d(probs, tuple(grid))[0].argmax(dim=0)

    def __call__(self, features: Tensor, grid: tuple[int, int], segment_features: Tensor | None = None,
                 key_bias: Tensor | None = None, image: Tensor | None = None) -> Decomposition:
        if image is None:
            raise ValueError("graph=wnet decomposes an image's pixels: pass image=")
        start = time.perf_counter()
        communities = self.classes(image, grid).cpu().numpy()
        return self.regions(communities, features, segment_features, {"wnet_ms": 1e3 * (time.perf_counter() - start)})
