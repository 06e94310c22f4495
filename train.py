"""Entry point: refinement of pseudo masks, DatUS² step 7 (python train.py --help)."""

import hydra
from omegaconf import DictConfig

from datus.cli import register_resolvers, run_command
from datus.cli.train import train_from_config

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train_from_config(cfg)


if __name__ == "__main__":
    run_command(main)
