"""Compose the project's Hydra configs from a module command (``python -m datus.bench`` etc.)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

#: The repository's ``conf/`` (the package is installed in editable mode from a clone).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, resolvable outside a Hydra app."""
    from hydra import compose, initialize_config_dir

    from datus.cli.setup import register_resolvers

    register_resolvers()
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"{CONF_DIR} not found: run from a clone of the repository (pip install -e .)")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name, overrides=["hydra.run.dir=.", *overrides])
