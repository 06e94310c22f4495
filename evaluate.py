"""Entry point: honest evaluation of pseudo masks (python evaluate.py --help)."""

import hydra
from omegaconf import DictConfig

from datus.cli import register_resolvers, run_command
from datus.cli.evaluate import evaluate_from_config

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    return evaluate_from_config(cfg)


if __name__ == "__main__":
    run_command(main)
