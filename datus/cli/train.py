"""From a composed ``train`` config to :func:`datus.refine.run_refinement` (train.py, ``discover.py refine=true``)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from datus.cli.build import feature_cache, postprocessor
from datus.cli.loggers import check_loggers, finish_loggers, instantiate_loggers
from datus.cli.setup import keep_digests, seed_everything
from datus.cli.signals import exit_on_sigterm
from datus.refine.data import pseudo_mask_folder
from datus.refine.run import run_refinement
from datus.runs import hold_run_dir, resolve_files
from datus.training import AtomicCheckpointIO, RandomStateCheckpoint

log = logging.getLogger(__name__)


def train_from_config(cfg: DictConfig) -> float | None:
    """train.py: refine, log, return the best validation mIoU (None without validation)."""
    exit_on_sigterm("rerun with ckpt_path=last to resume")
    check_loggers(cfg.get("logger"))  # W&B without a key or network: offline, decided now
    with hold_run_dir(cfg.paths.output_dir):  # one run per folder, for the run's whole life
        loggers = instantiate_loggers(cfg.logger)
        history = refine_from_config(cfg, loggers=loggers)
        finish_loggers(loggers)
    return history[-1].get("best_val_miou")


def refine_from_config(cfg: DictConfig, loggers: list | None = None) -> list[dict]:
    """train.py's body: build the datasets, model, trainer and callbacks that ``cfg`` names and run
    :func:`~datus.refine.run_refinement`; returns one entry per round."""
    seed_everything(cfg.seed)
    keep_digests(cfg.cache_dir)
    pseudo_mask_folder(cfg.pseudo_masks)  # before the datasets load
    if cfg.trainer.get("max_epochs") is not None and int(cfg.trainer.max_epochs) < 1:
        raise ValueError(f"trainer.max_epochs={cfg.trainer.max_epochs} trains nothing: refined masks would come "
                         "from an untrained network; pass trainer.max_epochs >= 1")
    out_dir = Path(cfg.paths.output_dir)
    train_set = instantiate(cfg.dataset, split=cfg.train_split)
    val_split = cfg.val_split
    if val_split is not None and str(val_split) == str(cfg.train_split) and train_set.has_masks:
        # the ground truth of the split whose refined masks are then scored would pick the checkpoint
        log.warning("val_split=%s is the split being refined: its ground truth would choose the checkpoint whose "
                    "masks are then scored on it, so this run does not validate (the last epoch is kept); pass "
                    "val_split=<another split> to validate", val_split)
        val_split = None
    val_set = instantiate(cfg.dataset, split=val_split) if val_split else None
    loggers = instantiate_loggers(cfg.logger) if loggers is None else loggers
    class_names = list(val_set.classes) if val_set else []

    def make_model(k: int, round_dir: Path):
        return instantiate(cfg.model, num_clusters=k, class_names=class_names,
                           picture_dir=str(round_dir / "val_pictures"))

    def make_trainer(round_dir: Path, validates: bool):
        best = instantiate(cfg.callbacks.checkpoint, dirpath=str(round_dir / "checkpoints"))
        last = instantiate(cfg.callbacks.last, dirpath=str(round_dir / "checkpoints"))
        callbacks = [best, last] if validates else [last]
        callbacks.append(RandomStateCheckpoint())
        plugins = [*(instantiate(cfg.trainer.get("plugins")) or []), AtomicCheckpointIO()]
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=plugins,
                              default_root_dir=str(round_dir))
        return trainer, best, last

    return run_refinement(
        make_model, make_trainer=make_trainer, train_set=train_set, val_set=val_set,
        pseudo_masks=cfg.pseudo_masks, out_dir=out_dir, k=int(cfg.k) if cfg.k else None, rounds=int(cfg.rounds),
        predict=bool(cfg.predict), ckpt_path=cfg.ckpt_path, cache=feature_cache(cfg, out_dir), crf=postprocessor(cfg),
        settings=training_settings(cfg), overwrite=bool(cfg.get("overwrite", False)), seed=cfg.seed,
    )


def training_settings(cfg: DictConfig) -> dict:
    """What shapes a run's checkpoints, for its ``run.json`` (resuming with other settings is refused):
    the data, the model, the frozen backbone and its input, the seed and the epoch count (a one-cycle
    schedule fixed for N epochs cannot be extended to more)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container = resolve_files(container)
    settings = {key: container.get(key) for key in ("model", "backbone", "resize", "seed", "train_split", "val_split")}
    settings["dataset"] = container["dataset"]
    settings["trainer.max_epochs"] = container["trainer"].get("max_epochs")
    return settings


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
