"""The record that ties one image file to its (optional) mask file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Sample"]


@dataclass(frozen=True)
class Sample:
    """One dataset entry: image path, mask path (None for unlabelled splits) and the shared stem."""

    image: Path
    mask: Path | None
    stem: str
