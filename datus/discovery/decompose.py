"""Scene decomposition of one image: patch features -> affinity -> communities -> segments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from datus.backbones import PATCH_FEATURES
from datus.discovery.affinity import Affinity, PatchGraph
from datus.discovery.community import Louvain
from datus.discovery.regions import connected_regions, valid_regions


@dataclass
class Decomposition:
    """The segments of one image on its patch grid.

    ``communities`` and ``segments`` are ``(h, w)`` maps; segment ids index ``segment_valid``,
    ``segment_community``, ``segment_sizes`` and ``segment_features`` (the mean of the
    L2-normalised patch features of each segment, used for labelling without a second pass).
    """

    communities: np.ndarray
    segments: np.ndarray
    segment_community: np.ndarray
    segment_valid: np.ndarray
    segment_sizes: np.ndarray
    segment_features: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_valid(self) -> int:
        return int(self.segment_valid.sum())


def segment_means(features: Tensor, segments: np.ndarray) -> np.ndarray:
    """Mean of L2-normalised ``(N, D)`` features per segment id, ``(S, D)`` float32."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    ids = torch.from_numpy(segments.ravel().astype(np.int64)).to(x.device)
    count = int(segments.max()) + 1
    sums = torch.zeros(count, x.shape[1], device=x.device).index_add_(0, ids, x)
    sizes = torch.bincount(ids, minlength=count).clamp_min(1).unsqueeze(1)
    return (sums / sizes).cpu().numpy()


class SceneDecomposer:
    """Configured decomposition (``graph`` config group): which features, which graph, Louvain.

    ``feature`` chooses the patch features of the graph (paper: ``keys``), ``min_patches`` is
    the size a region must exceed to be a valid segment (paper: 5), ``connectivity`` 8 as the
    paper; ``segment_feature`` is what :attr:`Decomposition.segment_features` averages, with the
    output tokens of ``segment_blocks`` (earlier blocks, negative from the end) beside it: each
    L2-normalised per patch, then concatenated (a mid-level block adds appearance that the last
    block's keys abstract away).
    """

    def __init__(
        self,
        affinity: Affinity,
        louvain: Louvain,
        feature: str = "keys",
        min_patches: int = 5,
        connectivity: int = 8,
        segment_feature: str = "keys",
        segment_blocks: tuple[int, ...] | list[int] = (),
    ) -> None:
        for key, value in (("feature", feature), ("segment_feature", segment_feature)):
            if value not in PATCH_FEATURES:
                raise ValueError(f"graph.{key}={value!r}: choose one of {PATCH_FEATURES}")
        if min_patches < 0:
            raise ValueError(f"graph.min_patches={min_patches} must be >= 0")
        if connectivity not in (4, 8):
            raise ValueError(f"graph.connectivity={connectivity}: choose 4 or 8")
        self.affinity, self.louvain = affinity, louvain
        self.feature = feature
        self.min_patches, self.connectivity = int(min_patches), int(connectivity)
        self.segment_feature = segment_feature
        self.segment_blocks = tuple(int(b) for b in segment_blocks)

    def segment_input(self, out) -> Tensor:
        """The ``(B, N, D)`` per-patch features whose segment means are stored, from a backbone output
        computed with ``blocks=segment_blocks``."""
        feature = out.features(self.segment_feature)
        if not self.segment_blocks:
            return feature
        parts = [feature, *(out.hidden[i] for i in sorted(out.hidden))]
        return torch.cat([torch.nn.functional.normalize(p.float(), dim=-1) for p in parts], dim=-1)

    #: whether :meth:`__call__` needs the image itself (a decomposer that segments pixels, e.g. W-Net's)
    needs_image: bool = False

    def check(self, *, k: int) -> None:
        """Refuse bad settings before any work (nothing to check here)."""

    def prepare(self, dataset, *, cache_root, k: int) -> dict:
        """Learn what the decomposition needs from the split before it runs (nothing here; W-Net's
        trains its network); returns what to put in the run's summary."""
        return {}

    def cache_key(self) -> dict:
        """What the segments depend on beyond the ``graph`` settings (after :meth:`prepare`), e.g. a trained file."""
        return {}

    @property
    def needs_key_bias(self) -> bool:
        """Whether the graph needs the backbone's key bias (``affinity.debias=remove_key_bias``)."""
        return self.affinity.debias == "remove_key_bias"

    def graph(self, features: Tensor, key_bias: Tensor | None = None) -> PatchGraph:
        """The patch graph of one image's ``(N, D)`` graph features."""
        return self.affinity.graph(features, key_bias)

    def __call__(
        self,
        features: Tensor,
        grid: tuple[int, int],
        segment_features: Tensor | None = None,
        key_bias: Tensor | None = None,
        image: Tensor | None = None,
    ) -> Decomposition:
        """Decompose one image given its ``(N, D)`` graph features on an ``(h, w)`` grid (``image``, its
        ``(3, H, W)`` uint8 pixels, is read only by decomposers with :attr:`needs_image`)."""
        t0 = time.perf_counter()
        graph = self.graph(features, key_bias)
        t1 = time.perf_counter()
        communities = self.louvain(graph).reshape(grid)
        t2 = time.perf_counter()
        return self.regions(communities, features, segment_features,
                            {"affinity_ms": 1e3 * (t1 - t0), "louvain_ms": 1e3 * (t2 - t1)})

    def regions(self, communities: np.ndarray, features: Tensor, segment_features: Tensor | None,
                timings: dict[str, float]) -> Decomposition:
        """DatUS² step 3 on an ``(h, w)`` map of communities: connected regions, the valid ones, their
        sizes and mean features."""
        t2 = time.perf_counter()
        segments, owners = connected_regions(communities, self.connectivity)
        valid = valid_regions(segments, self.min_patches)
        sizes = np.bincount(segments.ravel(), minlength=owners.size).astype(np.int32)
        means = segment_means(features if segment_features is None else segment_features, segments)
        t3 = time.perf_counter()
        return Decomposition(
            communities=communities.astype(np.int32),
            segments=segments,
            segment_community=owners,
            segment_valid=valid,
            segment_sizes=sizes,
            segment_features=means,
            timings={**timings, "segments_ms": 1e3 * (t3 - t2)},
        )
