"""A few real colour photographs shipped inside scikit-image (config name ``demo``).

Lets every pipeline stage run offline with no dataset download. No masks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from datus.data.base import SegmentationDataset, Transform
from datus.data.errors import DatasetError
from datus.data.sample import Sample

__all__ = ["DEMO_FILES", "DemoImages"]

#: Natural colour photos in ``skimage/data`` (checked: all RGB, 300..600 px high).
DEMO_FILES: tuple[str, ...] = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def skimage_data_dir() -> Path:
    """The ``data`` folder inside the installed scikit-image package (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset=demo needs scikit-image (pip install scikit-image); it ships the demo photos")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class DemoImages(SegmentationDataset):
    """Five scikit-image photos (astronaut, cat, coffee, motorcycle, rocket) as one unlabelled split."""

    name = "demo"

    def __init__(self, split: str = "all", transform: Transform | None = None) -> None:
        if split != "all":
            raise DatasetError(f"dataset.split={split!r}: the demo dataset has only the split 'all'")
        super().__init__(skimage_data_dir(), split, (), transform)

    def _find_samples(self) -> list[Sample]:
        missing = [f for f in DEMO_FILES if not (self.root / f).is_file()]
        if missing:
            raise DatasetError(f"scikit-image at {self.root} lacks demo photos {', '.join(missing)}; reinstall it")
        return [Sample(image=self.root / f, mask=None, stem=Path(f).stem) for f in DEMO_FILES]
