"""From a composed ``evaluate`` config to the honest scores of pseudo masks, or of a refined
checkpoint's predictions on a split (evaluate.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from datus.cli.build import feature_cache, postprocessor
from datus.cli.loggers import check_loggers, finish_loggers, instantiate_loggers, log_evaluation
from datus.cli.setup import keep_digests
from datus.cli.signals import exit_on_sigterm
from datus.evaluation import EvaluationError, evaluate_masks, format_table, write_report
from datus.metrics import check_matching
from datus.runs import hold_run_dir

log = logging.getLogger(__name__)


def _zero_shot(module, settings, dataset) -> int:
    """Give an open-vocabulary head (model=align_text) the CLIP text embeddings of other class names."""
    import torch

    from datus.openvocab import ClipTextEncoder, class_embeddings

    if not getattr(module.head, "open_vocabulary", False):
        raise EvaluationError(f"zero_shot.names needs a model=align_text checkpoint (CLIP text prototypes); "
                              f"model.head.name={module.hparams.head.get('name')} has none")
    names = [str(n) for n in settings.names]
    text = ClipTextEncoder(settings.clip_text, setting="zero_shot.clip_text")
    module.head.set_prototypes(torch.from_numpy(class_embeddings(text, names, list(settings.templates))))
    module.hparams.num_clusters = len(names)
    if dataset.has_masks and names != list(dataset.classes):
        log.warning("zero_shot.names %s differ from the dataset's classes %s: with matching=identity label i is "
                    "scored as the dataset's class i", names, list(dataset.classes))
    return len(names)


def evaluate_from_config(cfg: DictConfig) -> float:
    """evaluate.py: score ``masks=`` (or predict the split with ``ckpt=`` first); returns the mIoU."""
    exit_on_sigterm()
    check_loggers(cfg.get("logger"))  # W&B without a key or network: offline, decided now
    with hold_run_dir(cfg.paths.output_dir):  # one run per folder, for the run's whole life
        return _evaluate(cfg)


def _evaluate(cfg: DictConfig) -> float:
    keep_digests(cfg.cache_dir)
    if cfg.matching is not None:
        check_matching(cfg.matching)
    if cfg.zero_shot.names and cfg.ckpt is None:
        raise EvaluationError("zero_shot.names segments new class names with a model=align_text checkpoint: pass ckpt=")
    if (cfg.masks is None) == (cfg.ckpt is None):
        raise EvaluationError("pass exactly one of masks=DIR_OF_PNGS or ckpt=PATH (a train.py checkpoint)")
    masks, k, matching = cfg.masks, cfg.k, cfg.matching or "hungarian"
    if masks is not None and not Path(masks).is_dir():
        raise EvaluationError(f"masks={masks}: no such folder")
    if cfg.ckpt is not None and not Path(cfg.ckpt).is_file():
        raise EvaluationError(f"ckpt={cfg.ckpt}: no such file")
    out_dir = Path(cfg.paths.output_dir)
    dataset = instantiate(cfg.dataset)
    if cfg.ckpt is not None:  # predict the split with the refined model, then score those masks
        from datus.refine import load_refiner, predict_split

        module = load_refiner(cfg.ckpt)
        if cfg.zero_shot.names:
            k = _zero_shot(module, cfg.zero_shot, dataset)
        if k is not None and k != module.hparams.num_clusters:
            raise EvaluationError(f"k={k} but ckpt={cfg.ckpt} predicts K={module.hparams.num_clusters} clusters "
                                  "(a checkpoint's K is fixed): drop k= or pass a checkpoint trained with that K")
        predict_split(module, dataset, out_dir, cache=feature_cache(cfg, out_dir), crf=postprocessor(cfg),
                      evaluate=False)
        masks, k = out_dir / "pseudo_masks", module.hparams.num_clusters
        trained = module.hparams.get("matching", "hungarian")
        if cfg.matching is None:
            matching = trained  # scored as it was validated
        elif cfg.matching != trained:
            log.warning("matching=%s, but ckpt=%s was validated with matching=%s", cfg.matching, cfg.ckpt, trained)
    log.info("scoring %s against %r (K=%s, matching=%s)", masks, dataset, k, matching)
    result, samples = evaluate_masks(dataset, masks_dir=masks, num_clusters=k, protocol=cfg.protocol,
                                     matching=matching, allow_missing=cfg.allow_missing, num_samples=cfg.num_samples)
    write_report(out_dir, result, samples, list(dataset.classes))
    print(format_table(result))
    loggers = instantiate_loggers(cfg.logger)
    log_evaluation(loggers, cfg, result, out_dir)
    finish_loggers(loggers)
    log.info("metrics: %s", out_dir / "metrics.json")
    return result["miou"]

