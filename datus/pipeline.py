"""The DatUS² pipeline as one call: segments -> labels -> pseudo masks -> (evaluation).

Hydra-free: the entry point instantiates the objects and passes them in.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from datus.backbones import Backbone
from datus.data import SegmentationDataset
from datus.discovery import SceneDecomposer, SegmentStore, run_discovery
from datus.discovery.store import SegmentLookup
from datus.evaluation import evaluate_masks, format_table, write_report
from datus.io import atomic_write, load_json, remove_stale_temporaries, write_json
from datus.labeling import KMeans, PatchTokens, SegmentEmbedder, label_patches, run_labeling
from datus.labeling.run import ScoresToMask
from datus.postprocess import DenseCRF
from datus.runs import cache_entry, check_settings, job_lock, settings_key, shard_range
from datus.shards import ArrayLookup, ArrayStore, predict_missing, read_skipped

log = logging.getLogger(__name__)

METHODS = ("datus", "kmeans_patches")
STAGES = ("all", "segments", "labels")
SEGMENT_FEATURES = ("mean", "crop")


def check_choices(method: str, stage: str, segment_features: str) -> None:
    """Refuse unknown ``method``, ``stage`` or ``labeling.features`` values, naming the setting."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: choose one of {STAGES}")
    if segment_features not in SEGMENT_FEATURES:
        raise ValueError(f"labeling.features={segment_features!r}: choose one of {SEGMENT_FEATURES}")


def global_rank() -> int:
    """This process's rank (0 without DDP): Lightning sets it from the launcher's environment."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _check_complete(segments: SegmentStore, dataset: SegmentationDataset) -> None:
    """Refuse to cluster a split whose discovery is unfinished (e.g. a shard task still running)."""
    have = segments.done_indices() | {int(s["index"]) for s in read_skipped(segments.folder)}
    missing = [i for i in range(len(dataset)) if i not in have]
    if missing:
        names = ", ".join(dataset.samples[i].stem for i in missing[:5])
        raise ValueError(
            f"{len(missing)} of {len(dataset)} images have no segments in {segments.folder} (e.g. {names}): "
            "finish discovery first (every shard.index of stage=segments), then run stage=labels"
        )


def _link_discovery(work: Path, out_dir: Path) -> None:
    """Make the cached discovery visible in the run's folder: ``segments`` link, copied pictures."""
    link = out_dir / "segments"
    target = (work / "segments").resolve()
    if link.is_symlink() and link.resolve() != target:
        link.unlink()
    if not link.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
    for picture in sorted((work / "pictures").glob("*.png")):
        copy = out_dir / "pictures" / picture.name
        if not copy.is_file():
            atomic_write(copy, lambda f, p=picture: f.write(p.read_bytes()))


def crf_from_scores(crf: DenseCRF, dataset: SegmentationDataset, temperature: float) -> ScoresToMask:
    """Masks from per-patch cluster scores through ``crf`` with each original image (scores / ``temperature``
    are the logits: cosine similarities to the centroids are within [-1, 1])."""
    if temperature <= 0:
        raise ValueError(f"labeling.score_temperature={temperature} must be > 0")

    def to_mask(index: int, scores: np.ndarray) -> np.ndarray:
        image = dataset.load(index)["image"].permute(1, 2, 0).numpy()
        return crf(image, torch.from_numpy(np.asarray(scores, dtype=np.float32) / temperature))

    return to_mask


#: What a run writes into its output dir (removed when overwrite=true replaces another run).
RUN_OUTPUTS = ("pseudo_masks", "pseudo_masks_color", "labeling", "pictures", "segments", "patch_tokens",
               "patch_keys", "metrics.json", "summary.json", "confusion_matrix.png", "samples.png")


def _claim_output_dir(out_dir: Path, run_settings: dict[str, Any], overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if check_settings(out_dir / "run.json", run_settings, overwrite, what="pseudo masks"):
        for name in RUN_OUTPUTS:
            path = out_dir / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        write_json(out_dir / "run.json", run_settings)


def run_pipeline(
    *,
    backbone: Backbone,
    dataset: SegmentationDataset,
    make_trainer: Callable[[], pl.Trainer],
    out_dir: str | Path,
    kmeans: KMeans,
    decomposer: SceneDecomposer | None = None,
    method: str = "datus",
    stage: str = "all",
    segment_features: str = "mean",
    extractor: Backbone | None = None,
    crop_size: int = 224,
    crop_background: str = "black",
    fill: bool = True,
    weighted: bool = False,
    patch_feature: str = "tokens",
    settings: dict[str, Any] | None = None,
    run_settings: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    evaluate: bool = True,
    protocol: str = "honest",
    batch_size: int = 8,
    num_workers: int = 0,
    shard_size: int = 256,
    num_pictures: int = 8,
    overwrite: bool = False,
    postprocess: DenseCRF | None = None,
    score_temperature: float = 0.05,
) -> dict[str, Any]:
    """Run ``method`` on ``dataset`` into ``out_dir``; returns the summary (with metrics if evaluated).

    ``settings`` are what produce the backbone-pass outputs (segments, patch features): with
    ``cache_dir`` those outputs are kept in ``cache_dir/<kind>/<hash of settings>`` and reused by
    every run with the same settings (a K sweep passes over the images once). ``run_settings``
    (everything that changes the pseudo masks) guard ``out_dir`` against mixing two runs.
    ``shard_index``/``shard_count`` make this job decompose one contiguous block of the split
    (``stage=segments``); ``stage=labels`` then clusters the whole split. Under DDP every rank
    runs the backbone passes and returns ``{}``; rank 0 clusters, writes and evaluates.
    ``postprocess`` (the dense CRF) makes each mask from the per-patch cluster scores divided by
    ``score_temperature`` and the image, instead of one label per patch.
    """
    check_choices(method, stage, segment_features)
    indices = shard_range(len(dataset), shard_index, shard_count)
    if shard_count > 1 and (stage != "segments" or method != "datus"):
        raise ValueError(f"shard.count={shard_count} splits discovery only: use method=datus stage=segments, "
                         "then one stage=labels job once every shard is done")
    out_dir = Path(out_dir)
    settings = settings or {}
    _claim_output_dir(out_dir, run_settings if run_settings is not None else settings, overwrite)
    remove_stale_temporaries(out_dir)  # left by a killed run (SIGKILL cannot be caught)
    summary: dict[str, Any] = {}
    scores_to_mask = None if postprocess is None else crf_from_scores(postprocess, dataset, score_temperature)

    if method == "kmeans_patches":
        key = {**{k: v for k, v in settings.items() if k != "graph"}, "patch_feature": patch_feature}
        work = cache_entry(cache_dir, "patch_features", key) if cache_dir else out_dir
        remove_stale_temporaries(work)
        store = ArrayStore(work / f"patch_{patch_feature}")
        with job_lock(work / f".lock-rank{global_rank()}", f"patch features in {work}"):
            computed = len(predict_missing(PatchTokens(backbone, patch_feature), dataset, store, make_trainer,
                                           min_size=backbone.patch_size, batch_size=batch_size,
                                           num_workers=num_workers, shard_size=shard_size))
        if global_rank() != 0:
            return {}
        summary["patch_tokens_computed_this_run"] = computed
        summary["patch_features_dir"] = str(store.folder)
        summary["labeling"] = label_patches(store.read(), out_dir, kmeans, scores_to_mask)
        summary["labeling"]["patch_feature"] = patch_feature
    else:
        work = cache_entry(cache_dir, "discovery", settings) if cache_dir else out_dir
        remove_stale_temporaries(work)
        segments = SegmentStore(work / "segments")
        if stage in ("all", "segments"):
            if decomposer is None:
                raise ValueError("method=datus needs a graph (scene decomposer)")
            lock = work / f".lock-{shard_index}-of-{shard_count}-rank{global_rank()}"
            with job_lock(lock, f"segments in {work}"):
                summary = run_discovery(
                    backbone, decomposer, dataset, make_trainer(), work, settings=settings,
                    batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                    num_pictures=num_pictures, overwrite=overwrite, indices=indices,
                )
        elif (work / "summary.json").is_file():
            summary = load_json(work / "summary.json")
        if work != out_dir and segments.folder.is_dir():
            _link_discovery(work, out_dir)
        if stage in ("all", "labels"):
            if not segments.shards():
                raise ValueError(f"stage=labels: no segments in {segments.folder}; run stage=segments first")
            _check_complete(segments, dataset)
            features = None
            if segment_features == "crop":
                records = SegmentLookup(segments)
                source = extractor or backbone
                crop_key = {"extractor": source.name, "weights": getattr(source, "weights_source", None),
                            "crop_size": crop_size, "background": crop_background, "all_segments": fill}
                crop_dir = work / "crop_features" / settings_key(crop_key)
                embedder = SegmentEmbedder(source, records, backbone.patch_size, crop_size,
                                           crop_background, all_segments=fill)
                crop_store = ArrayStore(crop_dir)
                with job_lock(work / f".lock-crops-rank{global_rank()}", f"segment crops in {crop_dir}"):
                    predict_missing(embedder, dataset, crop_store, make_trainer, min_size=backbone.patch_size,
                                    batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                                    indices=records.indices())
                features = ArrayLookup(crop_store)  # read shard by shard while labelling
            if global_rank() != 0:
                return {}
            summary["labeling"] = run_labeling(segments, out_dir, kmeans, features, fill=fill, weighted=weighted,
                                               scores_to_mask=scores_to_mask)
            summary["labeling"]["segment_features"] = segment_features
        elif global_rank() != 0:
            return {}

    if evaluate and stage != "segments" and dataset.has_masks:
        result, samples = evaluate_masks(dataset, out_dir / "pseudo_masks", num_clusters=kmeans.k,
                                         protocol=protocol, allow_missing=True)
        write_report(out_dir, result, samples, list(dataset.classes))
        log.info("pseudo masks vs ground truth:\n%s", format_table(result))
        summary["metrics"] = {k: result[k] for k in ("miou", "pixel_accuracy", "mean_f1", "coverage")}
    summary["method"] = method
    summary["stage"] = stage
    if cache_dir:
        summary["cache_entry"] = str(work)
    write_json(out_dir / "summary.json", summary)
    return summary
