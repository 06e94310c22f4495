"""Errors raised by the data layer.

They subclass ``ValueError`` so callers that only care about "bad input" can
catch one thing; every message names the offending file or folder and, for
configuration problems, the Hydra setting to change.
"""

from __future__ import annotations

__all__ = ["DatasetError", "ImageReadError", "MaskError"]


class DatasetError(ValueError):
    """A dataset folder, file or setting is wrong (message says which and how to fix it)."""


class ImageReadError(DatasetError):
    """An image or mask file exists but cannot be decoded (truncated, empty, not an image)."""


class MaskError(DatasetError):
    """A label mask cannot be used: unreadable, not the size of its image, or holding unknown labels.

    Kept apart from :class:`ImageReadError` because a bad mask is never skipped: it would
    silently change what is evaluated, so it stops the run (folders check every mask up front).
    """
