"""Finding image/mask files on disk and pairing them by stem.

Shared by every dataset so that missing folders, empty folders and
unmatched files produce the same clear errors everywhere.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from datus.data.errors import DatasetError
from datus.data.io import IMAGE_EXTENSIONS
from datus.data.sample import Sample

__all__ = ["format_names", "list_images", "pair_samples", "require_dir"]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def format_names(names: list[str], limit: int = 5) -> str:
    """Short, readable list of names: the first ``limit`` then "... (N more)"."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _os_error(path: Path, err: OSError, setting: str) -> DatasetError:
    reason = err.strerror or type(err).__name__
    hint = "check its permissions" if isinstance(err, PermissionError) else f"check {setting}"
    return DatasetError(f"cannot read {path}: {reason} ({hint})")


def require_dir(path: str | os.PathLike[str], setting: str = "dataset.root", hint: str = "") -> Path:
    """Return ``path`` as a Path if it is an existing folder, else raise naming it and the setting."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"{setting}={path} does not exist{hint}") from None
    except OSError as err:  # no permission on a parent, a symlink loop, ...
        raise _os_error(path, err, setting) from err
    if not stat.S_ISDIR(mode):
        raise DatasetError(f"{setting}={path} is not a folder{hint}")
    return path


def _not_a_file(entry: os.DirEntry) -> str | None:
    """Why ``entry`` cannot be read as an image file (a loop, a dangling link, a FIFO, ...), or None."""
    try:
        mode = entry.stat().st_mode  # follows symbolic links
    except FileNotFoundError:
        return "a broken symbolic link (its target does not exist)"
    except OSError as err:
        return "a symbolic link loop" if err.errno == errno.ELOOP else f"cannot be read: {err.strerror or err}"
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def list_images(
    folder: Path,
    setting: str = "dataset.root and dataset.split",
    what: str = "images",
    ignored: list[dict[str, str]] | None = None,
) -> dict[str, Path]:
    """Map stem -> file for the image files directly inside ``folder`` (sorted by stem).

    Hidden files (``.*``, e.g. macOS ``._x.jpg``) and non-image files are ignored silently.
    Entries named like images that are not readable files (a symbolic link loop or a dangling
    link, a FIFO, a device, a folder) are left out and, when ``ignored`` is given, appended to it
    as ``{"file", "reason"}`` so that the run can name them (``summary.json``). Raises if the
    folder is missing or unreadable (naming it), holds no images, or two files share a stem
    (``a.png`` and ``a.jpg``), since pairing would be ambiguous.
    """
    folder = Path(folder).expanduser()
    try:
        is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        is_dir = None
    except OSError as err:
        raise _os_error(folder, err, setting) from err
    if not is_dir:
        state = "is not a folder" if is_dir is False else "does not exist"
        raise DatasetError(f"{folder} {state}: expected the {what} there; check {setting}")
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as err:
        raise _os_error(folder, err, setting) from err
    found: dict[str, Path] = {}
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        reason = _not_a_file(entry)
        if reason is not None:
            if ignored is not None:
                ignored.append({"file": str(path), "reason": reason})
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
