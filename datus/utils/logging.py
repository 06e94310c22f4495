"""Send an evaluation to the configured Lightning loggers (CSV, W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

HEADLINE = ("miou", "pixel_accuracy", "mean_f1", "coverage")


def log_evaluation(loggers: list, cfg: DictConfig, result: dict[str, Any], out_dir: Path, prefix: str = "") -> None:
    """Config and headline metrics to every logger; W&B also gets the pictures and per-class IoU."""
    metrics = {f"{prefix}{k}": result[k] for k in HEADLINE}
    metrics.update({f"{prefix}iou/{name}": v for name, v in result["per_class_iou"].items() if v is not None})
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(metrics)
        if type(logger).__name__ == "WandbLogger":
            images = [p for p in ("confusion_matrix.png", "samples.png") if (out_dir / p).is_file()]
            if images:
                logger.log_image(key=f"{prefix}pictures", images=[str(out_dir / p) for p in images], caption=images)
        logger.save()
