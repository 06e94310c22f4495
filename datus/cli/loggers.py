"""The configured Lightning loggers (CSV, W&B): built, sent a run's results, finished."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

HEADLINE = ("miou", "pixel_accuracy", "mean_f1", "coverage")
#: W&B modes that need neither an API key nor the network.
_LOCAL_MODES = ("offline", "disabled", "dryrun")

log = logging.getLogger("datus")


def check_loggers(cfg: DictConfig | None) -> None:
    """Decide before any work how the loggers can log: ``logger=wandb`` without an API key or without a
    reachable W&B server logs offline (``WANDB_MODE=offline``) with one warning naming where the run
    is kept and how to upload it, instead of a traceback or minutes of waiting after the work."""
    nodes = [node for node in (cfg or {}).values() if node and "WandbLogger" in str(node.get("_target_", ""))]
    if not nodes or os.environ.get("WANDB_MODE", "").lower() in _LOCAL_MODES or nodes[0].get("offline"):
        return
    host = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("://")[-1].split("/")[0]
    if not (os.environ.get("WANDB_API_KEY") or _netrc_key(host.split(":")[0])):
        reason = "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    elif not _reachable(host):
        reason = f"{host} cannot be reached (no network?)"
    else:
        return
    os.environ["WANDB_MODE"] = "offline"
    where = Path(str(nodes[0].get("save_dir") or ".")) / "wandb"
    log.warning("logger=wandb: %s, so this run logs offline into %s; upload it later with `wandb sync %s` "
                "(WANDB_MODE=offline says so up front)", reason, where, where / "offline-run-*")


def _netrc_key(host: str) -> str | None:
    """The API key ``wandb login`` stored for ``host`` in ~/.netrc (or $NETRC), if any."""
    import netrc

    try:
        entry = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` (port 443 unless given) opens within ``timeout`` seconds."""
    import socket

    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def instantiate_loggers(cfg: DictConfig | None) -> list:
    """Build every logger under the ``logger`` group (a dict of ``_target_`` nodes)."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node and "_target_" in node]


def finish_loggers(loggers: list) -> None:
    """Close every logger; end the W&B run so the next multirun job starts its own."""
    for logger in loggers:
        finalize = getattr(logger, "finalize", None)
        if finalize:
            finalize("success")
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()


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
