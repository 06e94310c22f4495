"""Send a run's results to the configured Lightning loggers (CSV, W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

HEADLINE = ("miou", "pixel_accuracy", "mean_f1", "coverage")


def evaluation_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Headline metrics and per-class IoU of an evaluation, as flat logger keys."""
    metrics = {f"{prefix}{k}": result[k] for k in HEADLINE}
    metrics.update({f"{prefix}iou/{name}": v for name, v in result["per_class_iou"].items() if v is not None})
    return metrics


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """What a discover.py run found (segments per image, coverage, k-means objective, a W-Net's training
    minutes and final losses), as logger keys."""
    out: dict[str, float] = {}
    for key, value in summary.get("per_image", {}).items():
        out[f"discovery/{key}_per_image"] = value
    for key in ("coverage", "coverage_without_fill", "kmeans_objective", "segments_clustered", "patches_clustered"):
        if isinstance(summary.get("labeling", {}).get(key), (int, float)):
            out[f"labeling/{key}"] = summary["labeling"][key]
    wnet = summary.get("wnet") or {}
    if isinstance(wnet.get("training_minutes"), (int, float)):
        out["wnet/training_minutes"] = wnet["training_minutes"]
    for key, value in (wnet.get("final_losses") or {}).items():
        if key != "epoch":
            out[f"wnet/final_{key}"] = value
    return out


def log_results(loggers: list, cfg: DictConfig, metrics: dict[str, float], pictures: list[Path],
                key: str = "pictures") -> None:
    """Config and ``metrics`` to every logger; W&B also gets the ``pictures`` (confusion matrix, samples)."""
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if metrics:
            logger.log_metrics(metrics)
        pictures = [p for p in pictures if Path(p).is_file()]
        if type(logger).__name__ == "WandbLogger" and pictures:
            logger.log_image(key=key, images=[str(p) for p in pictures], caption=[Path(p).name for p in pictures])
        logger.save()


def log_evaluation(loggers: list, cfg: DictConfig, result: dict[str, Any], out_dir: Path, prefix: str = "") -> None:
    """An evaluation's metrics and its pictures (``confusion_matrix.png``, ``samples.png``) to every logger."""
    pictures = [out_dir / "confusion_matrix.png", out_dir / "samples.png"]
    log_results(loggers, cfg, evaluation_metrics(result, prefix), pictures, key=f"{prefix}pictures")
