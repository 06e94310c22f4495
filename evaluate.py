"""Entry point: honest evaluation of pseudo masks (python evaluate.py --help)."""

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from datus.evaluation import EvaluationError, evaluate_masks, format_table, write_report
from datus.utils import instantiate_loggers
from datus.utils.logging import log_evaluation

log = logging.getLogger("datus")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    if cfg.ckpt is not None:
        raise EvaluationError("ckpt=: evaluating a refined model needs train.py, which is not in this version yet")
    if cfg.masks is None:
        raise EvaluationError("nothing to evaluate: pass masks=DIR_OF_PNGS")
    if not Path(cfg.masks).is_dir():
        raise EvaluationError(f"masks={cfg.masks}: no such folder")
    out_dir = Path(cfg.paths.output_dir)
    dataset = instantiate(cfg.dataset)
    result, samples = evaluate_masks(dataset, cfg.masks, num_clusters=cfg.k, protocol=cfg.protocol,
                                     allow_missing=cfg.allow_missing, num_samples=cfg.num_samples)
    write_report(out_dir, result, samples, list(dataset.classes))
    print(format_table(result))
    log_evaluation(instantiate_loggers(cfg.logger), cfg, result, out_dir)
    log.info("metrics: %s", out_dir / "metrics.json")
    return result["miou"]


if __name__ == "__main__":
    main()
