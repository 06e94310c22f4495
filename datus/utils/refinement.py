"""Refinement from a composed ``train`` config: the body of train.py, also run by ``discover.py refine=true``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from datus.io import remove_stale_temporaries, write_json
from datus.refine import PseudoMaskError, load_refiner, predict_split
from datus.refine.callbacks import RandomStateCheckpoint
from datus.refine.checkpoint_io import AtomicCheckpointIO
from datus.refine.data import check_pseudo_masks
from datus.refine.features import FeatureCache
from datus.utils.hydra import instantiate_loggers, seed_everything

log = logging.getLogger("datus")


def resolve_ckpt(value: str | None, round_dir: Path) -> str | None:
    """``"last"`` -> this round's ``checkpoints/last.ckpt`` if it exists; a path stays a path."""
    if value != "last":
        return value
    last = round_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def _metric(trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(np.asarray(value.cpu()))


def feature_cache(cfg: DictConfig, out_dir: Path) -> FeatureCache:
    """Where heads on frozen features keep their feature maps: ``cache_dir`` (or the run dir)."""
    # every image, whatever the training does (fast_dev_run runs one batch)
    make_trainer = lambda: instantiate(cfg.trainer, logger=False, fast_dev_run=False)  # noqa: E731
    return FeatureCache(cfg.get("cache_dir"), out_dir, make_trainer=make_trainer,
                        batch_size=cfg.get("batch_size", 8), num_workers=cfg.get("num_workers", 0))


def postprocessor(cfg: DictConfig):
    """The ``postprocess`` object (e.g. the dense CRF), or None."""
    return instantiate(cfg.postprocess) if cfg.get("postprocess") else None


def run_refinement(cfg: DictConfig, loggers: list | None = None) -> list[dict]:
    """Train ``cfg.model`` on ``cfg.pseudo_masks`` for ``cfg.rounds`` rounds; returns one entry per round.

    Writes ``train_summary.json`` after every round, checkpoints (best by val mIoU, and last
    for resuming) and, with ``predict=true`` or between rounds, refined masks of the
    training split in discover.py's format (through ``postprocess``, e.g. the dense CRF).
    """
    seed_everything(cfg.seed)
    if cfg.pseudo_masks is None:
        raise PseudoMaskError("pass pseudo_masks=DIR (the pseudo_masks/ folder written by discover.py)")
    masks = Path(cfg.pseudo_masks)
    if not masks.is_dir():
        raise PseudoMaskError(f"pseudo_masks={masks}: no such folder")
    out_dir = Path(cfg.paths.output_dir)
    remove_stale_temporaries(out_dir)
    train_set = instantiate(cfg.dataset, split=cfg.train_split)
    val_set = instantiate(cfg.dataset, split=cfg.val_split) if cfg.val_split else None
    k = check_pseudo_masks(train_set, masks, int(cfg.k) if cfg.k else None)
    crf = postprocessor(cfg)
    cache = feature_cache(cfg, out_dir)
    loggers = instantiate_loggers(cfg.logger) if loggers is None else loggers
    history: list[dict] = []
    for r in range(int(cfg.rounds)):
        round_dir = out_dir if cfg.rounds == 1 else out_dir / f"round_{r}"
        model = instantiate(cfg.model, num_clusters=k, class_names=list(val_set.classes) if val_set else [],
                            picture_dir=str(round_dir / "val_pictures"))
        datamodule = model.make_datamodule(train_set, masks, val_set, cache)
        checkpoint = instantiate(cfg.callbacks.checkpoint, dirpath=str(round_dir / "checkpoints"))
        last = instantiate(cfg.callbacks.last, dirpath=str(round_dir / "checkpoints"))
        callbacks = [checkpoint, last] if datamodule.val_set is not None else [last]
        callbacks.append(RandomStateCheckpoint())
        plugins = [*(instantiate(cfg.trainer.get("plugins")) or []), AtomicCheckpointIO()]
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=plugins,
                              default_root_dir=str(round_dir))
        log.info("round %d/%d: K=%d, %d training images with pseudo masks from %s", r + 1, cfg.rounds, k,
                 len(datamodule.train_set), masks)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt(cfg.ckpt_path, round_dir), weights_only=True)
        best = (checkpoint.best_model_path if datamodule.val_set is not None else "") or last.best_model_path
        entry = {"round": r, "pseudo_masks": str(masks), "best_checkpoint": best,
                 "val_miou": _metric(trainer, "val/miou"), "val_pixel_accuracy": _metric(trainer, "val/pixel_accuracy")}
        if datamodule.val_set is not None and checkpoint.best_model_score is not None:
            entry["best_val_miou"] = float(checkpoint.best_model_score)
        if r + 1 < cfg.rounds or cfg.predict:
            # the best checkpoint; the model in memory when none was written (fast dev run)
            module = load_refiner(best) if best else model
            target = out_dir / (f"round_{r + 1}" if r + 1 < cfg.rounds else "refined")
            result = predict_split(module, train_set, target, cache=cache, crf=crf)
            if result:
                entry["refined_train_miou"] = result["miou"]
                entry["refined_train_pixel_accuracy"] = result["pixel_accuracy"]
            masks = target / "pseudo_masks"
            log.info("refined masks of %s: %s", cfg.train_split, masks)
        history.append(entry)
        write_json(out_dir / "train_summary.json", {"k": k, "rounds": history})
    return history
