"""Finding image/mask files on disk and pairing them by stem.

Shared by every dataset so that missing folders, empty folders and
unmatched files produce the same clear errors everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from datus.data.errors import DatasetError
from datus.data.io import IMAGE_EXTENSIONS
from datus.data.sample import Sample

__all__ = ["format_names", "list_images", "pair_samples", "require_dir"]


def format_names(names: list[str], limit: int = 5) -> str:
    """Short, readable list of names: the first ``limit`` then "... (N more)"."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def require_dir(path: str | os.PathLike[str], setting: str = "dataset.root", hint: str = "") -> Path:
    """Return ``path`` as a Path if it is an existing folder, else raise naming it and the setting."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{setting}={path} does not exist{hint}")
    if not path.is_dir():
        raise DatasetError(f"{setting}={path} is not a folder{hint}")
    return path


def list_images(
    folder: Path, setting: str = "dataset.root and dataset.split", what: str = "images"
) -> dict[str, Path]:
    """Map stem -> file for the image files directly inside ``folder`` (sorted by stem).

    Hidden files (``.*``, e.g. macOS ``._x.jpg``) and non-image files are
    ignored. Raises if the folder is missing, holds no images, or two files
    share a stem (``a.png`` and ``a.jpg``), since pairing would be ambiguous.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"{folder} {state}: expected the {what} there; check {setting}")
    found: dict[str, Path] = {}
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        path = Path(entry.path)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            raise DatasetError(f"two {what} files share the stem {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    if not found:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(f"no {what} found in {folder} (looked for {exts}); check {setting}")
    return dict(sorted(found.items()))


def pair_samples(
    images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path
) -> list[Sample]:
    """Pair image and mask files by stem into sorted :class:`Sample` objects.

    Any image without a mask or mask without an image is an error listing how
    many and the first few names: silently dropping them would change the
    evaluation set.
    """
    no_mask = [images[s].name for s in images if s not in masks]
    no_image = [masks[s].name for s in masks if s not in images]
    problems = []
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) in {image_dir} have no mask in {mask_dir}: {format_names(no_mask)}")
    if no_image:
        problems.append(f"{len(no_image)} mask(s) in {mask_dir} have no image in {image_dir}: {format_names(no_image)}")
    if problems:
        details = "\n  ".join(problems)
        raise DatasetError(f"images and masks do not match (paired by file name without extension):\n  {details}")
    return [Sample(image=images[s], mask=masks[s], stem=s) for s in sorted(images)]
