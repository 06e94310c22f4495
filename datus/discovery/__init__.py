"""Scene decomposition (DatUS² steps 1-3): patch features -> affinity graph -> Louvain -> segments."""

from datus.discovery.affinity import AFFINITY_KINDS, DEBIAS_CHOICES, Affinity, PatchGraph, density
from datus.discovery.community import Louvain, list_community_backends, modularity, register_community_backend
from datus.discovery.decompose import Decomposition, SceneDecomposer, segment_means
from datus.discovery.module import DiscoveryModule, SegmentWriter
from datus.discovery.regions import connected_regions, valid_regions
from datus.discovery.run import RunConflictError, run_discovery
from datus.discovery.store import ImageSegments, SegmentStore

__all__ = [
    "AFFINITY_KINDS",
    "DEBIAS_CHOICES",
    "Affinity",
    "Decomposition",
    "DiscoveryModule",
    "ImageSegments",
    "Louvain",
    "PatchGraph",
    "RunConflictError",
    "SceneDecomposer",
    "SegmentStore",
    "SegmentWriter",
    "connected_regions",
    "density",
    "list_community_backends",
    "modularity",
    "register_community_backend",
    "run_discovery",
    "segment_means",
    "valid_regions",
]
