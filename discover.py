"""Entry point: the DatUS² pipeline on a dataset split (python discover.py --help)."""

import hydra
from omegaconf import DictConfig

from datus.cli import register_resolvers, run_command
from datus.cli.discover import discover_from_config

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="discover")
def main(cfg: DictConfig) -> float | None:
    return discover_from_config(cfg)


if __name__ == "__main__":
    run_command(main)
