"""Entry point: refinement of pseudo masks, DatUS² step 7 (python train.py --help)."""

import hydra
from omegaconf import DictConfig

from datus.cli import finish_loggers, instantiate_loggers, register_resolvers, run_command
from datus.cli.signals import exit_on_sigterm
from datus.cli.train import refine_from_config

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    exit_on_sigterm("rerun with ckpt_path=last to resume")
    loggers = instantiate_loggers(cfg.logger)
    history = refine_from_config(cfg, loggers=loggers)
    finish_loggers(loggers)
    return history[-1].get("best_val_miou")


if __name__ == "__main__":
    run_command(main)
