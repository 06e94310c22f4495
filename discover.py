"""Entry point: the DatUS² pipeline on a dataset split (python discover.py --help)."""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from datus.cli import finish_loggers, instantiate_loggers, register_resolvers, run_command, seed_everything
from datus.cli.discover import pipeline_kwargs
from datus.cli.logging import evaluation_metrics, log_results, summary_metrics
from datus.cli.signals import exit_on_sigterm
from datus.cli.train import refine_from_config, refinement_config
from datus.io import load_json
from datus.pipeline import run_pipeline

log = logging.getLogger("datus")
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="discover")
def main(cfg: DictConfig) -> float | None:
    exit_on_sigterm()
    seed_everything(cfg.seed)
    out_dir = Path(cfg.paths.output_dir)
    summary = run_pipeline(**pipeline_kwargs(cfg, out_dir))
    if not summary:  # a DDP rank other than 0: rank 0 clusters, writes and logs
        return None
    loggers = instantiate_loggers(cfg.logger)
    metrics = summary.get("metrics")
    logged = summary_metrics(summary)
    if metrics:
        logged.update(evaluation_metrics(load_json(out_dir / "metrics.json"), prefix="pseudo_masks/"))
    pictures = [out_dir / "confusion_matrix.png", out_dir / "samples.png", *sorted((out_dir / "pictures").glob("*.png"))]
    log_results(loggers, cfg, logged, pictures)
    if (out_dir / "pictures").is_dir():
        log.info("pictures: %s", out_dir / "pictures")
    if cfg.stage == "segments":
        log.info("segments: %s (then run stage=labels)", summary.get("segments_dir"))
    else:
        log.info("outputs: %s (pseudo_masks/, pseudo_masks_color/, summary.json%s)",
                 out_dir, ", metrics.json" if metrics else "")
    result = metrics["miou"] if metrics else None
    if cfg.refine and cfg.stage != "segments":
        history = refine_from_config(refinement_config(cfg, out_dir), loggers=loggers)
        result = history[-1].get("best_val_miou", result)
    finish_loggers(loggers)
    return result


if __name__ == "__main__":
    run_command(main)
