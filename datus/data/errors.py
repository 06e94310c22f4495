"""Errors raised by the data layer.

They subclass ``ValueError`` so callers that only care about "bad input" can
catch one thing; every message names the offending file or folder and, for
configuration problems, the Hydra setting to change.
"""

from __future__ import annotations

__all__ = ["DatasetError", "ImageReadError"]


class DatasetError(ValueError):
    """A dataset folder, file or setting is wrong (message says which and how to fix it)."""


class ImageReadError(DatasetError):
    """An image or mask file exists but cannot be decoded (truncated, empty, not an image)."""
