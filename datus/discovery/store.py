"""On-disk format of scene decompositions: a :class:`datus.shards.ShardStore` of images' segments.

``<out>/segments/shard-<rank>-<first index>.npz`` holds up to ``shard_size`` images as flat,
offset-indexed arrays (no pickle): ``stems``, ``indices`` (dataset index), ``grid`` (h, w),
``input_size`` (H, W fed to the backbone), ``orig_size`` (H, W of the file), per patch
``communities`` and ``segments`` (ids local to the image), per segment ``segment_valid``,
``segment_community``, ``segment_sizes`` and ``segment_features`` (float16 mean of the
L2-normalised patch features), and ``patch_offsets`` / ``segment_offsets`` (n + 1 each) to
slice them per image. ``<out>/segments/config.json`` records the settings that produced them;
a finished shard is never rewritten, so a rerun only computes images that are not in a shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datus.discovery.decompose import Decomposition
from datus.shards import ShardLookup, ShardStore

#: Per-image timings kept in each shard (milliseconds), in this column order.
TIMING_KEYS = ("backbone_ms", "affinity_ms", "louvain_ms", "segments_ms", "wnet_ms")
_PER_PATCH = ("communities", "segments")
_PER_SEGMENT = ("segment_valid", "segment_community", "segment_sizes", "segment_features")


@dataclass
class ImageSegments:
    """One image's record as stored: its decomposition plus where it came from."""

    stem: str
    index: int
    grid: tuple[int, int]
    input_size: tuple[int, int]
    orig_size: tuple[int, int]
    decomposition: Decomposition


class SegmentStore(ShardStore):
    """Read and write the sharded decompositions under ``folder``."""

    def write_shard(self, records: list[ImageSegments], rank: int = 0) -> Path:
        """Write ``records`` as one shard (atomic); returns its path."""
        decs = [r.decomposition for r in records]
        arrays: dict[str, np.ndarray] = {
            **self.identity_arrays([r.index for r in records]),
            "stems": np.array([r.stem for r in records], dtype=str),
            "indices": np.array([r.index for r in records], dtype=np.int64),
            "grid": np.array([r.grid for r in records], dtype=np.int32),
            "input_size": np.array([r.input_size for r in records], dtype=np.int32),
            "orig_size": np.array([r.orig_size for r in records], dtype=np.int32),
            "patch_offsets": np.cumsum([0] + [d.segments.size for d in decs]).astype(np.int64),
            "segment_offsets": np.cumsum([0] + [d.segment_valid.size for d in decs]).astype(np.int64),
            "timings": np.array([[d.timings.get(k, np.nan) for k in TIMING_KEYS] for d in decs], dtype=np.float32),
        }
        for name in _PER_PATCH:
            arrays[name] = np.concatenate([getattr(d, name).ravel() for d in decs]).astype(np.int32)
        for name in _PER_SEGMENT:
            parts = [getattr(d, name) for d in decs]
            arrays[name] = np.concatenate(parts).astype(np.float16 if name == "segment_features" else parts[0].dtype)
        return self.save_arrays(self.shard_path([(r.index, r.stem) for r in records], rank), arrays)

    def read_shard(self, path: Path) -> Iterator[ImageSegments]:
        with np.load(path, allow_pickle=False) as z:
            data = {key: z[key] for key in z.files}
        po, so = data["patch_offsets"], data["segment_offsets"]
        for i, stem in enumerate(data["stems"]):
            grid = tuple(int(v) for v in data["grid"][i])
            patches, segs = slice(po[i], po[i + 1]), slice(so[i], so[i + 1])
            yield ImageSegments(
                stem=str(stem),
                index=int(data["indices"][i]),
                grid=grid,
                input_size=tuple(int(v) for v in data["input_size"][i]),
                orig_size=tuple(int(v) for v in data["orig_size"][i]),
                decomposition=Decomposition(
                    communities=data["communities"][patches].reshape(grid),
                    segments=data["segments"][patches].reshape(grid),
                    segment_community=data["segment_community"][segs],
                    segment_valid=data["segment_valid"][segs],
                    segment_sizes=data["segment_sizes"][segs],
                    segment_features=data["segment_features"][segs],
                    timings={k: float(v) for k, v in zip(TIMING_KEYS, data["timings"][i]) if np.isfinite(v)},
                ),
            )


class SegmentLookup(ShardLookup):
    """``lookup[index]`` -> that image's :class:`ImageSegments`, one shard in memory at a time."""
