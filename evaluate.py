"""Entry point: honest evaluation of pseudo masks (python evaluate.py --help)."""

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from datus.cli import finish_loggers, instantiate_loggers, register_resolvers, run_command
from datus.cli.logging import log_evaluation
from datus.evaluation import EvaluationError, evaluate_masks, format_table, write_report
from datus.metrics import check_matching

log = logging.getLogger("datus")
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    check_matching(cfg.matching)
    if (cfg.masks is None) == (cfg.ckpt is None):
        raise EvaluationError("pass exactly one of masks=DIR_OF_PNGS or ckpt=PATH (a train.py checkpoint)")
    masks, k = cfg.masks, cfg.k
    if masks is not None and not Path(masks).is_dir():
        raise EvaluationError(f"masks={masks}: no such folder")
    if cfg.ckpt is not None and not Path(cfg.ckpt).is_file():
        raise EvaluationError(f"ckpt={cfg.ckpt}: no such file")
    out_dir = Path(cfg.paths.output_dir)
    dataset = instantiate(cfg.dataset)
    if cfg.ckpt is not None:  # predict the split with the refined model, then score those masks
        from datus.cli.train import feature_cache, postprocessor
        from datus.refine import load_refiner, predict_split

        module = load_refiner(cfg.ckpt)
        if k is not None and k != module.hparams.num_clusters:
            raise EvaluationError(f"k={k} but ckpt={cfg.ckpt} predicts K={module.hparams.num_clusters} clusters "
                                  "(a checkpoint's K is fixed): drop k= or pass a checkpoint trained with that K")
        predict_split(module, dataset, out_dir, cache=feature_cache(cfg, out_dir), crf=postprocessor(cfg),
                      evaluate=False)
        masks, k = out_dir / "pseudo_masks", module.hparams.num_clusters
    result, samples = evaluate_masks(dataset, masks_dir=masks, num_clusters=k, protocol=cfg.protocol,
                                     matching=cfg.matching, allow_missing=cfg.allow_missing, num_samples=cfg.num_samples)
    write_report(out_dir, result, samples, list(dataset.classes))
    print(format_table(result))
    loggers = instantiate_loggers(cfg.logger)
    log_evaluation(loggers, cfg, result, out_dir)
    finish_loggers(loggers)
    log.info("metrics: %s", out_dir / "metrics.json")
    return result["miou"]


if __name__ == "__main__":
    run_command(main)
