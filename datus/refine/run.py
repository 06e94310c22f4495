"""Refinement (DatUS² step 7) over rounds: train on pseudo masks, keep checkpoints, write refined masks.

Hydra-free, like :func:`datus.discovery.run_discovery`: the command-line layer
(:mod:`datus.cli.train`) builds the model, trainer and callbacks from the config and passes
factories in.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from datus.data import SegmentationDataset
from datus.features import FeatureCache
from datus.io import remove_stale_temporaries, write_json
from datus.postprocess import DenseCRF
from datus.refine.data import check_pseudo_masks, pseudo_mask_folder
from datus.refine.load import load_refiner
from datus.refine.predict import predict_split
from datus.runs import check_settings, files_fingerprint

log = logging.getLogger("datus")

#: ``(K, round dir) -> module`` (a ``HeadModule`` or ``RefineModule`` that writes its validation pictures there)
MakeModel = Callable[[int, Path], pl.LightningModule]
#: ``(round dir, validates) -> (trainer, best checkpoint callback or None, last checkpoint callback)``
MakeTrainer = Callable[[Path, bool], tuple[pl.Trainer, Any, Any]]


def resolve_ckpt(value: str | None, round_dir: Path) -> str | None:
    """``"last"`` -> this round's ``checkpoints/last.ckpt`` if it exists; a path stays a path."""
    if value != "last":
        return value
    last = round_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


#: What a training run writes into its output dir (removed when overwrite=true replaces another run).
TRAIN_OUTPUTS = ("checkpoints", "refined", "val_pictures", "train_summary.json")


def _outputs(out_dir: Path) -> list[Path]:
    return [p for p in (*(out_dir / n for n in TRAIN_OUTPUTS), *sorted(out_dir.glob("round_*"))) if p.exists()]


def claim_training_dir(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """``out_dir/run.json`` remembers what trains there (data, pseudo masks and their files, K, model,
    backbone, epochs, ...). Checkpoints of other settings are never resumed or mixed: the run is
    refused naming the changed settings, or with ``overwrite`` their outputs are removed first. A
    run dir holding no outputs (a run that failed early) is simply taken over."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "run.json"
    if path.is_file() and not _outputs(out_dir):
        path.unlink()
    if check_settings(path, settings, overwrite, what="checkpoints and refined masks"):
        for output in _outputs(out_dir):
            shutil.rmtree(output) if output.is_dir() else output.unlink()


def _metric(trainer: pl.Trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(np.asarray(value.cpu()))


def run_refinement(
    make_model: MakeModel,
    *,
    make_trainer: MakeTrainer,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset | None,
    pseudo_masks: str | Path | None,
    out_dir: str | Path,
    k: int | None = None,
    rounds: int = 1,
    predict: bool = False,
    ckpt_path: str | None = None,
    cache: FeatureCache | None = None,
    crf: DenseCRF | None = None,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """Train on ``pseudo_masks`` for ``rounds`` rounds; returns one entry per round.

    Every pseudo mask is checked first (missing, wrong size, labels >= ``k``; K inferred from
    the masks when ``k`` is None). Writes ``train_summary.json`` after every round, checkpoints
    (best by val mIoU, and last for resuming) and, with ``predict`` or between rounds, refined
    masks of the training split in discover.py's format (through ``crf`` when given): round
    r+1 learns round r's refined masks. ``settings`` (what shapes the checkpoints besides the
    pseudo masks, which are fingerprinted here) guard ``out_dir``: see :func:`claim_training_dir`.
    ``seed`` seeds every round (``seed + round``) once its data are ready, right before training: the
    training never depends on whether the feature cache was filled by this run, an earlier one or a
    concurrent one (building it draws random numbers only when it is empty).
    """
    masks = pseudo_mask_folder(pseudo_masks)
    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)
    k = check_pseudo_masks(train_set, masks, k)
    mask_files = [(s.stem, masks / f"{s.stem}.png") for s in train_set.samples]
    claim_training_dir(out_dir, {**(settings or {}), "k": k, "rounds": int(rounds),
                                 "pseudo_masks": str(masks.resolve()),
                                 "pseudo_mask_files": files_fingerprint(mask_files)}, overwrite)
    history: list[dict[str, Any]] = []
    for r in range(int(rounds)):
        round_dir = out_dir if rounds == 1 else out_dir / f"round_{r}"
        if seed is not None:
            pl.seed_everything(seed + r, workers=True, verbose=False)
        model = make_model(k, round_dir)
        datamodule = model.make_datamodule(train_set, masks, val_set, cache)
        if seed is not None:  # again: the data above may have filled the cache, drawing random numbers
            pl.seed_everything(seed + r, workers=True, verbose=False)
        validates = datamodule.val_set is not None
        trainer, best_callback, last_callback = make_trainer(round_dir, validates)
        log.info("round %d/%d: K=%d, %d training images with pseudo masks from %s", r + 1, rounds, k,
                 len(datamodule.train_set), masks)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt(ckpt_path, round_dir), weights_only=True)
        best = ((best_callback.best_model_path if validates else "") or last_callback.best_model_path)
        entry = {"round": r, "pseudo_masks": str(masks), "best_checkpoint": best,
                 "val_miou": _metric(trainer, "val/miou"), "val_pixel_accuracy": _metric(trainer, "val/pixel_accuracy")}
        if validates and best_callback.best_model_score is not None:
            entry["best_val_miou"] = float(best_callback.best_model_score)
        if r + 1 < rounds or predict:
            # the best checkpoint; the model in memory when none was written (fast dev run)
            module = load_refiner(best) if best else model
            target = out_dir / (f"round_{r + 1}" if r + 1 < rounds else "refined")
            result = predict_split(module, train_set, target, cache=cache, crf=crf)
            if result:
                entry["refined_train_miou"] = result["miou"]
                entry["refined_train_pixel_accuracy"] = result["pixel_accuracy"]
                entry["refined_train_per_class_iou"] = result.get("per_class_iou")
            masks = target / "pseudo_masks"
            log.info("refined masks of %s: %s", train_set.split, masks)
        history.append(entry)
        write_json(out_dir / "train_summary.json", {"k": k, "rounds": history})
    return history
