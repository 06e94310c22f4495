"""Glue between Hydra configs and Lightning objects, used only by the entry points."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict


class _DropAdvertising(logging.Filter):
    """Lightning's "💡 Tip: try installing ..." lines say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropAdvertising())


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


def seed_everything(seed: int | None) -> None:
    """Seed python, numpy and torch (workers too) when a seed is given."""
    if seed is not None:
        pl.seed_everything(int(seed), workers=True, verbose=False)


def refinement_config(cfg: DictConfig, out_dir: Path) -> DictConfig:
    """The ``train`` config for ``discover.py refine=true``: train.yaml plus ``refine_overrides``,
    trained on this run's dataset split and pseudo masks, written to ``out_dir/refine``."""
    from hydra import compose

    train_cfg = compose("train", overrides=list(cfg.refine_overrides))
    with open_dict(train_cfg):
        train_cfg.dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        train_cfg.paths = {**OmegaConf.to_container(cfg.paths, resolve=True), "output_dir": str(out_dir / "refine")}
        train_cfg.train_split = cfg.dataset.get("split", train_cfg.train_split)
        train_cfg.pseudo_masks = str(out_dir / "pseudo_masks")
        train_cfg.k = int(cfg.k)
        train_cfg.seed = cfg.seed
        # heads on frozen features see the discovery backbone at the discovery resolution
        train_cfg.backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
        train_cfg.resize = OmegaConf.to_container(cfg.resize, resolve=True)
        train_cfg.cache_dir = cfg.cache_dir
    return train_cfg


def _sweep_group(default: str) -> str:
    """``<task>-<sweep dir name>`` in a multirun (W&B group), else ``default``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return default
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{default}-{Path(hydra_cfg.sweep.dir).name}"
    return default


def _run_name(default: str) -> str:
    """The job's overrides (``k=6,backbone=...``), or ``default`` when there are none."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    return HydraConfig.get().job.override_dirname or default


def _on_gpu(accelerator: str) -> bool:
    """Whether ``trainer.accelerator`` puts the model on a GPU here: what ``sync_batchnorm`` needs
    (torch's SyncBatchNorm refuses CPU modules, so ``trainer=ddp`` on CPU trains without it)."""
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


OmegaConf.register_new_resolver("datus.on_gpu", _on_gpu, replace=True)
OmegaConf.register_new_resolver("datus.sweep_group", _sweep_group, replace=True)
OmegaConf.register_new_resolver("datus.run_name", _run_name, replace=True)
