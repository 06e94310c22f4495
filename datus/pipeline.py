"""A pipeline job: a method's backbone passes, the labeler's pseudo masks, then evaluation.

Hydra-free: the command-line layer (:mod:`datus.cli.discover`) builds the objects from the
config and passes them in; this module only composes them (cache entry, locks, output dir,
DDP ranks) and never looks at a method's name.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from datus.backbones import Backbone
from datus.data import SegmentationDataset
from datus.evaluation import evaluate_masks, format_table, write_report
from datus.features import FeatureCache
from datus.io import remove_stale_temporaries, write_json
from datus.labeling import Labeler
from datus.labeling.inductive import feature_settings
from datus.methods import STAGES, Job, Method
from datus.postprocess import DenseCRF
from datus.projection import Projection
from datus.runs import cache_entry, check_settings, global_rank, shard_range
from datus.shards import PredictLoop, dataset_manifest

log = logging.getLogger(__name__)


class StageClock:
    """Wall seconds per stage of a run (``summary.json`` ``seconds``: where the time went)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now


#: What a run writes into its output dir (removed when overwrite=true replaces another run).
RUN_OUTPUTS = ("pseudo_masks", "pseudo_masks_color", "labeling", "pictures", "segments", "features", "metrics.json", "summary.json", "confusion_matrix.png", "samples.png", "legend.png")


def _claim_output_dir(out_dir: Path, run_settings: dict[str, Any], overwrite: bool) -> None:
    """``out_dir/run.json`` guards the run dir against mixing runs; a dir whose run failed before
    writing anything (only its run.json) is taken over by the corrected rerun."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "run.json").is_file() and not any((out_dir / name).exists() or (out_dir / name).is_symlink()
                                                        for name in RUN_OUTPUTS):
        (out_dir / "run.json").unlink()
    if check_settings(out_dir / "run.json", run_settings, overwrite, what="pseudo masks"):
        for name in RUN_OUTPUTS:
            path = out_dir / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        write_json(out_dir / "run.json", run_settings)


@dataclass(frozen=True)
class Passes:
    """How the backbone passes run (Lightning predict loops) and where their outputs are kept."""

    make_trainer: Callable[[], pl.Trainer]
    batch_size: int = 1
    num_workers: int = 0
    shard_size: int = 256
    #: ``cache_dir/<kind>/<hash of the method's cache key>``: reused by every run with the same settings
    cache_dir: str | Path | None = None


@dataclass(frozen=True)
class RunDir:
    """The run's output folder and what guards it: ``settings`` (everything that changes the pseudo
    masks) are kept in ``run.json`` so two runs never mix; ``overwrite`` replaces another run."""

    path: Path
    settings: dict[str, Any] | None = None
    overwrite: bool = False
    num_pictures: int = 8


@dataclass(frozen=True)
class Scoring:
    """How the pseudo masks are scored against the ground truth (when the split has masks)."""

    evaluate: bool = True
    protocol: str = "honest"
    matching: str = "hungarian"


def run_pipeline(
    method: Method,
    *,
    labeler: Labeler,
    backbone: Backbone | None,
    dataset: SegmentationDataset,
    passes: Passes,
    run_dir: RunDir,
    settings: dict[str, Any] | None = None,
    stage: str = "all",
    shard: tuple[int, int] = (0, 1),
    scoring: Scoring | None = None,
    postprocess: DenseCRF | None = None,
    projection: Projection | None = None,
) -> dict[str, Any]:
    """Run ``method`` on ``dataset`` into ``run_dir.path``; returns the summary (with metrics if evaluated).

    ``settings`` are what produce the backbone-pass outputs (segments, patch features): with
    ``passes.cache_dir`` those outputs are kept in ``cache_dir/<kind>/<hash of the method's cache key>``
    and reused by every run with the same settings (a K sweep passes over the images once).
    ``run_dir.settings`` (everything that changes the pseudo masks; ``settings`` if None) guard the
    folder against mixing two runs. ``shard=(index, count)`` makes this job decompose one contiguous block of the split
    (``stage=segments``); ``stage=labels`` then clusters the whole split. Under DDP every rank
    runs the backbone passes and returns ``{}``; rank 0 clusters, writes and evaluates.
    ``postprocess`` (the dense CRF) makes each mask from the per-patch cluster scores and the
    image instead of one label per patch. ``projection`` (``feature_head=stego``) first trains a feature
    head on the split's frozen features (or reuses the cached one): the backbone's outputs then
    carry its ``codes``. ``backbone`` is None for a method that reads pixels only (``method=wnet``);
    :meth:`Method.prepare` first trains what the method learns from the split (a W-Net), kept in
    ``cache_dir`` (or ``out_dir``) and reused.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: choose one of {STAGES}")
    if stage != "all" and not method.staged:
        raise ValueError(f"stage={stage} splits a method's backbone passes from its labelling; "
                         f"method={method.name} runs both at once: use stage=all")
    shard_index, shard_count = shard
    indices = shard_range(len(dataset), shard_index, shard_count)
    if shard_count > 1 and (stage != "segments" or not method.staged):
        raise ValueError(f"shard.count={shard_count} splits discovery only: use method=datus stage=segments, "
                         "then one stage=labels job once every shard is done")
    out_dir, cache_dir, scoring = Path(run_dir.path), passes.cache_dir, scoring or Scoring()
    make_trainer, batch_size, num_workers = passes.make_trainer, passes.batch_size, passes.num_workers
    settings = settings or {}
    features = feature_settings(backbone=settings.get("backbone"), resize=settings.get("resize"), method=method.name,
                                features=method.features_read(), labeling=labeler.feature_settings(), head=None)
    labeler.check_centroids(features, skip=("head",))  # before any image is read; the head's file once trained
    ignored = list(getattr(dataset, "ignored_files", []))
    for entry in ignored:
        log.warning("ignored %s: %s, not an image file", entry["file"], entry["reason"])
    _claim_output_dir(out_dir, run_dir.settings if run_dir.settings is not None else settings, run_dir.overwrite)
    remove_stale_temporaries(out_dir)  # left by a killed run (SIGKILL cannot be caught)
    feature_cache = FeatureCache(cache_dir, out_dir, make_trainer, batch_size=batch_size, num_workers=num_workers)
    backbone_settings = settings.get("backbone")
    if not isinstance(backbone_settings, dict):
        backbone_settings = {"name": None if backbone is None else backbone.name}
    if projection is not None:
        backbone = projection.attach(backbone, dataset, backbone_settings=backbone_settings, resize=dataset.transform,
                                     cache=feature_cache)
        # the codes are the head's: segments and features cached from another head must not be reused
        settings = {**settings, "head_file": projection.report["digest"]}
        features["head"] = projection.report["digest"]
        backbone_settings = {**backbone_settings, "head_file": projection.report["digest"]}
        labeler.check_centroids(features)
    cache_root = Path(cache_dir).expanduser() if cache_dir else out_dir
    clock = StageClock()
    prepared = method.prepare(dataset, cache_root=cache_root, k=labeler.k)
    clock.lap("prepare")
    key = method.cache_key(settings)
    work = cache_entry(cache_dir, method.cache_kind, key) if cache_dir and method.cache_kind else out_dir
    remove_stale_temporaries(work)
    loop = PredictLoop(dataset, make_trainer, min_size=backbone.patch_size if backbone is not None else 1,
                       batch_size=batch_size, num_workers=num_workers, shard_size=passes.shard_size)
    job = Job(backbone=backbone, loop=loop, work=work, out_dir=out_dir, labeler=labeler, stage=stage,
              indices=indices, settings=key, num_pictures=run_dir.num_pictures, overwrite=run_dir.overwrite, rank=global_rank(),
              shard=(shard_index, shard_count), manifest=dataset_manifest(dataset), feature_settings=features,
              fit_on={"dataset": getattr(dataset, "name", None), "root": str(getattr(dataset, "root", "")),
                      "split": getattr(dataset, "split", None)}, feature_cache=feature_cache,
              backbone_settings=backbone_settings)
    summary = method.compute(job)
    clock.lap("backbone_passes")
    if global_rank() != 0:
        return {}
    if stage != "segments":
        summary["labeling"] = method.label(job, method.scores_to_mask(labeler, postprocess, dataset))
        clock.lap("labels")
    if scoring.evaluate and stage != "segments" and dataset.has_masks:
        result, samples = evaluate_masks(dataset, masks_dir=out_dir / "pseudo_masks", num_clusters=labeler.k,
                                         protocol=scoring.protocol, matching=scoring.matching, allow_missing=True)
        write_report(out_dir, result, samples, list(dataset.classes))
        log.info("pseudo masks vs ground truth:\n%s", format_table(result))
        summary["metrics"] = {k: result[k] for k in ("miou", "pixel_accuracy", "mean_f1", "coverage")}
        clock.lap("evaluation")
    summary["ignored_files"] = ignored
    if getattr(dataset, "mismatched_masks", None):
        summary["mask_size_mismatch"] = dataset.mask_size_report()
    if projection is not None:
        summary["feature_head"] = projection.report
    summary.update(prepared)
    summary["method"] = method.name
    summary["backbone"] = backbone.name if backbone is not None else None  # None: the method reads pixels
    summary["stage"] = stage
    if cache_dir and method.cache_kind:
        summary["cache_entry"] = str(work)
    summary["seconds"] = clock.seconds
    write_json(out_dir / "summary.json", summary)
    return summary
