"""What every method is: the :class:`Method` interface and the :class:`Job` a pipeline hands it.

Each method has one small interface, so the pipeline composes objects and never branches on a
method's name:

- :meth:`Method.cache_key`: the settings its backbone passes depend on (the cache entry's key);
- :meth:`Method.compute`: its backbone passes into ``work`` (resumable, every DDP rank);
- :meth:`Method.label`: rank 0 clusters what was computed and writes the pseudo masks.

A new method is one file in this package (a :class:`Method` subclass, re-exported by
``datus/methods/__init__.py``) and one YAML file in ``conf/method/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datus.backbones import Backbone
from datus.discovery import SegmentStore
from datus.features import FeatureCache
from datus.labeling import Labeler
from datus.labeling.run import ScoresToMask
from datus.shards import Manifest, PredictLoop

#: Which part of a method a job runs: all, its backbone passes only, or labelling only.
STAGES = ("all", "segments", "labels")


@dataclass
class Job:
    """What one pipeline job hands a method: the backbone, the predict loop over the split, where
    the backbone passes live (``work``: the cache entry or the run dir), and which part to run."""

    backbone: Backbone | None
    loop: PredictLoop
    work: Path
    out_dir: Path
    labeler: Labeler
    num_pictures: int
    stage: str = "all"
    indices: range | None = None
    settings: dict[str, Any] | None = None
    overwrite: bool = False
    rank: int = 0
    #: this job's block of the split, (index, count): one task of a sharded discovery
    shard: tuple[int, int] = (0, 1)
    #: the split's files now (:func:`datus.shards.dataset_manifest`): stores match records by it
    manifest: Manifest | None = None
    #: what the clustered features are (:func:`datus.labeling.inductive.feature_settings`) and the split
    #: they come from: recorded in ``centroids.npz``, checked where another split is labelled with it
    feature_settings: dict[str, Any] | None = None
    fit_on: dict[str, Any] | None = None
    #: frozen feature maps of the split, computed once and cached (what trained stages read), and what names
    #: the backbone in their keys (its settings; a feature head's file too)
    feature_cache: FeatureCache | None = None
    backbone_settings: dict[str, Any] | None = None

    def segments(self) -> SegmentStore:
        return SegmentStore(self.work / "segments", manifest=self.manifest)


class Method(ABC):
    """A way from images to pseudo masks through the :class:`~datus.labeling.Labeler`."""

    #: the name in summaries and reports (the ``conf/method`` file's)
    name: str
    #: the cache's kind of entry (``<cache_dir>/<kind>/<hash>``); None: nothing to cache by settings
    cache_kind: str | None
    #: whether ``stage=segments|labels`` and ``shard.count`` split this method's work
    staged: bool = False
    #: whether it reads a backbone's features (W-Net reads pixels only: no backbone is built)
    uses_backbone: bool = True
    #: whether ``labeling.centroids`` (another run's clusters) can label its features
    inductive: bool = False

    def check(self, *, k: int) -> None:  # noqa: B027 - optional hook: most methods have nothing to check
        """Refuse bad settings before anything is built or read (e.g. a trained file made for another K)."""

    def prepare(self, dataset, *, cache_root: Path, k: int) -> dict[str, Any]:
        """Train what the method learns from the split before its passes (e.g. a W-Net), or load it from
        ``cache_root``; returns what to put in the summary. Called before :meth:`cache_key`."""
        return {}

    def cache_key(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings its backbone passes depend on (backbone, dataset, resize, graph, ...)."""
        return settings

    @abstractmethod
    def features_read(self) -> dict[str, str]:
        """The patch features it reads, by the setting that names each, or by ``method=NAME`` where no setting
        does (checked before any work)."""

    @abstractmethod
    def compute(self, job: Job) -> dict[str, Any]:
        """Run the backbone passes missing from ``job.work``; returns what to put in the summary."""

    @abstractmethod
    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        """Cluster and write ``job.out_dir/pseudo_masks``; returns the labelling summary."""

    def scores_to_mask(self, labeler: Labeler, crf, dataset) -> ScoresToMask | None:
        """How ``postprocess`` (the dense CRF, or None) turns this method's per-pixel or per-patch scores
        into a mask: by default the labeler's cluster scores (cosine to the centroids) as logits."""
        return labeler.scores_to_mask(crf, dataset)
