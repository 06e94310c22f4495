"""Small helpers shared by the entry points (Hydra-aware code lives here, not in the library)."""

from datus.utils.hydra import instantiate_loggers, seed_everything

__all__ = ["instantiate_loggers", "seed_everything"]
