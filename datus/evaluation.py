"""Evaluate pseudo masks (PNG folders) against a dataset's ground truth, with pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from datus.data import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    SegmentationDataset,
    read_image,
)
from datus.masks import UNLABELLED, check_k, infer_k, largest_label, read_mask
from datus.metrics import ClusterConfusion


class EvaluationError(ValueError):
    """Masks and ground truth do not fit together (missing masks, wrong sizes, ...)."""


def _read_png(path: Path) -> np.ndarray:
    try:
        return read_mask(path)
    except ValueError as err:
        raise EvaluationError(str(err)) from err


def _read_picture(path: Path, max_pixels: int | None) -> np.ndarray | None:
    """The image for samples.png, or None when it cannot be read (discovery skipped and named it)."""
    try:
        return read_image(path, max_pixels)
    except ImageReadError:
        return None


def evaluate_masks(
    dataset: SegmentationDataset,
    *,
    masks_dir: str | Path,
    num_clusters: int | None = None,
    protocol: str = "honest",
    matching: str = "hungarian",
    allow_missing: bool = False,
    num_samples: int = 6,
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """Score ``masks_dir/<stem>.png`` for every image of ``dataset``; returns (metrics, samples).

    A mask whose size differs from its ground truth is an error (never silently resized).
    Missing masks are an error naming them, unless ``allow_missing`` (then all-unlabelled, as
    for images that discovery skipped because they could not be read: their ground truth counts).
    ``num_clusters`` defaults to the largest label found + 1. ``matching``: ``"hungarian"`` (clusters
    to classes, one to one) or ``"identity"`` (the label is the class index: open-vocabulary methods).
    """
    masks_dir = Path(masks_dir)
    if not dataset.has_masks:
        raise EvaluationError(f"{dataset!r} has no ground truth to evaluate against")
    if not masks_dir.is_dir():
        raise EvaluationError(f"masks={masks_dir}: no such folder")
    paths = {s.stem: masks_dir / f"{s.stem}.png" for s in dataset.samples}
    missing = [stem for stem, p in paths.items() if not p.is_file()]
    if missing and not allow_missing:
        raise EvaluationError(
            f"{len(missing)} of {len(paths)} images have no mask in {masks_dir} "
            f"(e.g. {', '.join(missing[:5])}); pass allow_missing=true to count them as unlabelled"
        )
    if num_clusters is not None:
        num_clusters = check_k(num_clusters, "k")
    else:
        num_clusters = infer_k(largest_label(_read_png(path)) for stem, path in paths.items() if stem not in missing)
    metric = ClusterConfusion(num_clusters, list(dataset.classes), protocol=protocol, matching=matching)
    samples: list[dict[str, np.ndarray]] = []
    for sample in dataset.samples:
        truth = dataset.read_mask(sample)
        if sample.stem in missing:
            pred = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
        else:
            pred = _read_png(paths[sample.stem])
            if pred.shape != truth.shape:
                raise EvaluationError(
                    f"mask {paths[sample.stem]} is {pred.shape[1]}x{pred.shape[0]} but the ground truth of "
                    f"{sample.stem} is {truth.shape[1]}x{truth.shape[0]} (width x height); masks are never resized"
                )
            bad = (pred >= num_clusters) & (pred != UNLABELLED)
            if bad.any():
                raise EvaluationError(f"mask {paths[sample.stem]} has labels >= k={num_clusters}")
        metric.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(truth))
        if len(samples) < num_samples:
            image = _read_picture(sample.image, getattr(dataset, "max_pixels", DEFAULT_MAX_PIXELS))
            if image is not None:
                samples.append({"stem": sample.stem, "image": image, "truth": truth, "pred": pred})
    result = metric.compute()
    result["images"] = len(paths)
    result["missing_masks"] = missing
    mismatched = dataset.mask_size_report() if hasattr(dataset, "mask_size_report") else None
    if mismatched:
        result["mask_size_mismatch"] = mismatched
    return result, samples










def format_table(result: dict[str, Any]) -> str:
    """The per-class table printed at the end of an evaluation."""
    lines = [f"{'class':<16}{'IoU':>8}{'prec.':>8}{'recall':>8}"]
    for name, iou in result["per_class_iou"].items():
        p, r = result["per_class_precision"][name], result["per_class_recall"][name]
        fmt = lambda v: "   -   " if v is None else f"{100 * v:7.1f}"
        lines.append(f"{name:<16}{fmt(iou):>8}{fmt(p):>8}{fmt(r):>8}")
    lines.append(f"{'mIoU':<16}{100 * result['miou']:8.1f}   pixel acc. {100 * result['pixel_accuracy']:.1f}"
                 f"   mean F1 {100 * result['mean_f1']:.1f}   coverage {100 * result['coverage']:.1f}")
    if "majority" in result:
        lines.append(f"majority (many-to-one) mIoU {100 * result['majority']['miou']:.1f}")
    if "paper" in result:
        lines.append(f"paper protocol (unlabelled dropped; not comparable): mIoU {100 * result['paper']['miou']:.1f}"
                     f"  pixel acc. {100 * result['paper']['pixel_accuracy']:.1f}")
    return "\n".join(lines)


def write_report(out_dir: str | Path, result: dict[str, Any], samples, class_names: list[str]) -> None:
    """``metrics.json``, ``confusion_matrix.png`` and ``samples.png`` under ``out_dir``."""
    from datus.figures import confusion_figure, samples_figure
    from datus.io import save_figure, write_json

    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", result)
    save_figure(out_dir / "confusion_matrix.png", confusion_figure(result, class_names))
    if samples:
        save_figure(out_dir / "samples.png", samples_figure(samples, result, class_names))
