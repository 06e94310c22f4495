"""Entry point: DeepLabV3 refinement of pseudo masks (python train.py --help)."""

import hydra
from omegaconf import DictConfig

from datus.utils import finish_loggers, instantiate_loggers
from datus.utils.refinement import run_refinement
from datus.utils.signals import exit_on_sigterm


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    exit_on_sigterm("rerun with ckpt_path=last to resume")
    loggers = instantiate_loggers(cfg.logger)
    history = run_refinement(cfg, loggers=loggers)
    finish_loggers(loggers)
    return history[-1].get("best_val_miou")


if __name__ == "__main__":
    main()
