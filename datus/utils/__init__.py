"""Small helpers shared by the entry points (Hydra-aware code lives here, not in the library)."""

from datus.utils.hydra import finish_loggers, instantiate_loggers, refinement_config, seed_everything

__all__ = ["finish_loggers", "instantiate_loggers", "refinement_config", "seed_everything"]
