"""Honest unsupervised-segmentation metrics from one dataset-level confusion matrix.

Clusters are matched to classes after the whole split has been seen (never per image), by the
Hungarian algorithm maximising agreement. What the field's public code gets wrong, we do not:

* unlabelled predictions (255) count as wrong in the headline numbers; coverage is reported
  beside them (``protocol="paper"`` additionally reports the authors' way, dropping them);
* with more clusters than classes, the clusters left unmatched by the Hungarian matching
  count as wrong; the many-to-one "majority" mapping is reported separately, by name;
* only void ground truth (255) is ignored.

Methods that name classes (open vocabulary) are scored with ``matching="identity"``: the predicted
index is the class, nothing is matched after the fact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

from datus.masks import UNLABELLED


def _per_class(matched: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Scores from a ``(C + 1, C)`` matrix: rows = predicted class (last = wrong/none), cols = truth."""
    tp = np.diag(matched[:num_classes]).astype(np.float64)
    predicted = matched[:num_classes].sum(axis=1).astype(np.float64)
    actual = matched.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        union = predicted + actual - tp
        iou = np.where(union > 0, tp / union, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.where(actual > 0, 0.0, np.nan))
        recall = np.where(actual > 0, tp / actual, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        f1 = np.where(np.isnan(recall) & np.isnan(iou), np.nan, f1)
    return {"iou": iou, "precision": precision, "recall": recall, "f1": f1, "tp": tp}


def _apply_mapping(confusion: np.ndarray, mapping: np.ndarray, num_classes: int) -> np.ndarray:
    """Fold a ``(K + 1, C)`` cluster confusion into ``(C + 1, C)`` via cluster -> class (-1 = none)."""
    matched = np.zeros((num_classes + 1, num_classes), dtype=np.int64)
    for cluster, cls in enumerate(mapping):
        matched[cls if cls >= 0 else num_classes] += confusion[cluster]
    matched[num_classes] += confusion[-1]  # unlabelled predictions: wrong
    return matched


def hungarian_mapping(confusion: np.ndarray) -> np.ndarray:
    """Cluster -> class (``-1`` = unmatched) maximising matched pixels; one cluster per class."""
    clusters = confusion[:-1]
    rows, cols = linear_sum_assignment(clusters, maximize=True)
    mapping = np.full(clusters.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def identity_mapping(confusion: np.ndarray) -> np.ndarray:
    """Prediction ``i`` -> class ``i`` (open vocabulary: the predicted index is the class); predictions
    beyond the classes -> ``-1`` (wrong)."""
    clusters, classes = confusion.shape[0] - 1, confusion.shape[1]
    return np.where(np.arange(clusters) < classes, np.arange(clusters), -1).astype(np.int64)


#: How predictions are matched to classes (``matching=``): one cluster per class maximising matched
#: pixels (unsupervised methods), or the predicted index is the class (methods that name classes).
MATCHINGS = {"hungarian": hungarian_mapping, "identity": identity_mapping}


def majority_mapping(confusion: np.ndarray) -> np.ndarray:
    """Cluster -> its most frequent class (many-to-one); clusters with no labelled pixel -> -1."""
    clusters = confusion[:-1]
    mapping = clusters.argmax(axis=1)
    mapping[clusters.sum(axis=1) == 0] = -1
    return mapping


def score(
    confusion: np.ndarray,
    mapping: np.ndarray,
    class_names: list[str],
    drop_unlabelled: bool = False,
) -> dict[str, Any]:
    """mIoU, pixel accuracy, F1 and per-class scores of ``confusion`` under ``mapping``."""
    num_classes = len(class_names)
    confusion = confusion.copy()
    if drop_unlabelled:
        confusion[-1] = 0
    matched = _apply_mapping(confusion, mapping, num_classes)
    per = _per_class(matched, num_classes)
    total = matched.sum()
    return {
        "miou": float(np.nanmean(per["iou"])) if np.isfinite(per["iou"]).any() else 0.0,
        "pixel_accuracy": float(per["tp"].sum() / total) if total else 0.0,
        "mean_f1": float(np.nanmean(per["f1"])) if np.isfinite(per["f1"]).any() else 0.0,
        "per_class_iou": dict(zip(class_names, _clean(per["iou"]))),
        "per_class_precision": dict(zip(class_names, _clean(per["precision"]))),
        "per_class_recall": dict(zip(class_names, _clean(per["recall"]))),
        "matched_confusion": matched.tolist(),
    }


def _clean(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def check_matching(matching: str) -> str:
    """``matching`` if it names one of :data:`MATCHINGS`, else a ValueError naming the choices."""
    if matching not in MATCHINGS:
        raise ValueError(f"matching={matching!r}: choose one of {', '.join(MATCHINGS)}")
    return matching


def evaluate_confusion(
    confusion: np.ndarray | torch.Tensor,
    class_names: list[str],
    protocol: str = "honest",
    matching: str = "hungarian",
) -> dict[str, Any]:
    """Every number of a run from its ``(K + 1, C)`` confusion (last row: unlabelled predictions).

    ``protocol="honest"`` (default): unlabelled predictions count as wrong. ``"paper"``: the
    same, plus a ``"paper"`` section with them dropped, as the authors' scripts did.
    ``matching``: ``"hungarian"`` (clusters matched to classes one to one) or ``"identity"``
    (prediction ``i`` is class ``i``: open-vocabulary mIoU; no majority section).
    """
    if protocol not in ("honest", "paper"):
        raise ValueError(f"protocol={protocol!r}: choose 'honest' or 'paper'")
    check_matching(matching)
    confusion = np.asarray(torch.as_tensor(confusion).cpu(), dtype=np.int64)
    num_clusters, num_classes = confusion.shape[0] - 1, confusion.shape[1]
    if num_classes != len(class_names):
        raise ValueError(f"{num_classes} classes in the confusion matrix, {len(class_names)} names")
    labelled = int(confusion.sum())
    mapping = MATCHINGS[matching](confusion)
    result = score(confusion, mapping, class_names)
    result.update({
        "protocol": "honest: unlabelled predictions count as wrong; only void ground truth ignored",
        "coverage": float(1 - confusion[-1].sum() / labelled) if labelled else 0.0,
        "num_clusters": num_clusters,
        "num_classes": num_classes,
        "labelled_pixels": labelled,
        "matching": {
            "method": matching,
            "cluster_to_class": {str(k): (class_names[c] if c >= 0 else None) for k, c in enumerate(mapping)},
        },
        "confusion_matrix": confusion.tolist(),
    })
    if num_clusters > num_classes and matching == "hungarian":
        majority = majority_mapping(confusion)
        many = score(confusion, majority, class_names)
        many["matching"] = {
            "method": "majority (many-to-one)",
            "cluster_to_class": {str(k): (class_names[c] if c >= 0 else None) for k, c in enumerate(majority)},
        }
        result["majority"] = many
    if protocol == "paper":
        paper = score(confusion, mapping, class_names, drop_unlabelled=True)
        paper["protocol"] = "paper (authors' scripts): unlabelled predictions dropped; not comparable"
        result["paper"] = paper
    return result


class ClusterConfusion(Metric):
    """Accumulates the ``(K + 1, C)`` cluster x class confusion over a dataset (summed across processes).

    ``update(preds, target)``: ``preds`` cluster ids in ``[0, K)`` or 255 (unlabelled),
    ``target`` class ids in ``[0, C)`` or 255 (void, ignored). ``compute()`` returns
    :func:`evaluate_confusion`'s dictionary.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_clusters: int, class_names: list[str], protocol: str = "honest",
                 matching: str = "hungarian", **kwargs) -> None:
        super().__init__(**kwargs)
        self.matching = check_matching(matching)
        if num_clusters < 1:
            raise ValueError(f"num_clusters={num_clusters} must be >= 1")
        self.num_clusters = int(num_clusters)
        self.class_names = list(class_names)
        self.protocol = protocol
        size = (self.num_clusters + 1, len(self.class_names))
        self.add_state("confusion", default=torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} != ground truth {tuple(target.shape)}")
        k, c = self.num_clusters, len(self.class_names)
        keep = target != UNLABELLED
        p = preds[keep].long()
        t = target[keep].long()
        p = torch.where(p == UNLABELLED, torch.full_like(p, k), p)
        if p.numel() and (p.min() < 0 or p.max() > k):
            raise ValueError(f"predictions outside [0, {k}) and 255: {torch.unique(p[(p < 0) | (p > k)]).tolist()}")
        if t.numel() and (t.min() < 0 or t.max() >= c):
            raise ValueError(f"ground truth outside [0, {c}) and 255")
        self.confusion += torch.bincount(p * c + t, minlength=(k + 1) * c).reshape(k + 1, c)

    def compute(self) -> dict[str, Any]:
        return evaluate_confusion(self.confusion, self.class_names, self.protocol, self.matching)
