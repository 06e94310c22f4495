"""The DatUS² pipeline as one call: segments -> labels -> pseudo masks -> (evaluation).

Hydra-free: the entry point instantiates the objects and passes them in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Subset

from datus.backbones import Backbone
from datus.data import SegmentationDataset, SkipUnreadable
from datus.discovery import SceneDecomposer, SegmentStore, run_discovery
from datus.discovery.module import collate_items
from datus.evaluation import evaluate_masks, format_table, write_report
from datus.io import write_json
from datus.labeling import ArrayStore, ArrayWriter, KMeans, PatchTokens, SegmentEmbedder, label_patches, run_labeling

log = logging.getLogger(__name__)

METHODS = ("datus", "kmeans_patches")
STAGES = ("all", "segments", "labels")
SEGMENT_FEATURES = ("mean", "crop")


def _predict_missing(module: pl.LightningModule, dataset, store: ArrayStore, make_trainer, batch_size: int,
                     num_workers: int, shard_size: int, min_size: int, indices: list[int] | None = None) -> int:
    """Run ``module`` over the images (of ``indices``) not yet in ``store``; returns how many."""
    done = store.done_indices()
    todo = [i for i in (range(len(dataset)) if indices is None else indices) if i not in done]
    if todo:
        trainer = make_trainer()
        trainer.callbacks.append(ArrayWriter(store, shard_size))
        loader = DataLoader(Subset(SkipUnreadable(dataset, min_size), todo), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=collate_items)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    return len(todo)


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
    evaluate: bool = True,
    protocol: str = "honest",
    batch_size: int = 8,
    num_workers: int = 0,
    shard_size: int = 256,
    num_pictures: int = 8,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run ``method`` on ``dataset`` into ``out_dir``; returns the summary (with metrics if evaluated)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: choose one of {STAGES}")
    if segment_features not in SEGMENT_FEATURES:
        raise ValueError(f"labeling.features={segment_features!r}: choose one of {SEGMENT_FEATURES}")
    out_dir = Path(out_dir)
    summary: dict[str, Any] = {}

    if method == "kmeans_patches":
        store = ArrayStore(out_dir / f"patch_{patch_feature}")
        computed = _predict_missing(PatchTokens(backbone, patch_feature), dataset, store, make_trainer, batch_size,
                                    num_workers, shard_size, backbone.patch_size)
        summary["patch_tokens_computed_this_run"] = computed
        summary["labeling"] = label_patches(store.read(), out_dir, kmeans)
        summary["labeling"]["patch_feature"] = patch_feature
    else:
        if stage in ("all", "segments"):
            if decomposer is None:
                raise ValueError("method=datus needs a graph (scene decomposer)")
            summary = run_discovery(
                backbone, decomposer, dataset, make_trainer(), out_dir, settings=settings,
                batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                num_pictures=num_pictures, overwrite=overwrite,
            )
        if stage in ("all", "labels"):
            segments = SegmentStore(out_dir / "segments")
            if not segments.shards():
                raise ValueError(f"stage=labels: no segments in {segments.folder}; run stage=segments first")
            features = None
            if segment_features == "crop":
                records = {r.index: r for r in segments}
                embedder = SegmentEmbedder(extractor or backbone, records, backbone.patch_size, crop_size,
                                           crop_background, all_segments=fill)
                crop_store = ArrayStore(out_dir / "labeling" / f"crop_features_{(extractor or backbone).name}")
                _predict_missing(embedder, dataset, crop_store, make_trainer, batch_size, num_workers,
                                 shard_size, backbone.patch_size, indices=sorted(records))
                features = {i: f for i, (_, f, _) in crop_store.read().items()}
            summary["labeling"] = run_labeling(segments, out_dir, kmeans, features, fill=fill, weighted=weighted)
            summary["labeling"]["segment_features"] = segment_features

    if evaluate and stage != "segments" and dataset.has_masks:
        result, samples = evaluate_masks(dataset, out_dir / "pseudo_masks", num_clusters=kmeans.k,
                                         protocol=protocol, allow_missing=True)
        write_report(out_dir, result, samples, list(dataset.classes))
        log.info("pseudo masks vs ground truth:\n%s", format_table(result))
        summary["metrics"] = {k: result[k] for k in ("miou", "pixel_accuracy", "mean_f1", "coverage")}
    summary["method"] = method
    write_json(out_dir / "summary.json", summary)
    return summary
