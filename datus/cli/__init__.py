"""The command-line layer: Hydra configs to library objects, loggers, signals (used by the entry points).

Nothing in ``datus`` below this package imports it; ``discover.py``, ``train.py``, ``evaluate.py``
and the module commands (``python -m datus.viz|bench``) do.
"""

from datus.cli.errors import run_command, user_error
from datus.cli.loggers import finish_loggers, instantiate_loggers
from datus.cli.setup import register_resolvers, seed_everything

__all__ = ["finish_loggers", "instantiate_loggers", "register_resolvers", "run_command", "seed_everything",
           "user_error"]
