"""Run folders: the guard against mixing settings, the settings-keyed cache, and job locks.

A K sweep should not recompute the backbone passes: discovery outputs live in
``<cache>/<kind>/<key>/`` where ``key`` hashes the settings that produce them, so every job
with the same backbone, data, resize and graph finds them. Jobs that start together take a
file lock, so one computes and the others wait and reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datus.io import file_fingerprint, load_json, write_json

log = logging.getLogger(__name__)

#: Bumped when the on-disk format of cached outputs changes, so old entries are not read.
CACHE_FORMAT = 2  # 2: shards record each image's file fingerprint


#: Config nodes that change the backbone passes (segments, patch features): the cache key.
SETTINGS_KEYS = ("backbone", "dataset", "resize", "graph")
#: Config nodes that change the pseudo masks: a rerun into the same output dir must match them.
RUN_KEYS = (*SETTINGS_KEYS, "k", "labeling", "method", "seed", "postprocess")


def backbone_identity(backbone: dict[str, Any]) -> dict[str, Any]:
    """``backbone`` settings as a key: a checkpoint file (``backbone.weights=<path>``) is named by its
    absolute path and contents, so a file rewritten in place (a DINO run's
    ``checkpoint.pth`` after another epoch) or one relative name used from two folders never reuses
    what other weights computed. ``random`` names its fixed initialisation's seed; ``hub`` and
    ``packaged`` are kept as they are, a missing file too (building the backbone names it)."""
    weights = backbone.get("weights")
    if weights == "random":  # one fixed initialisation (keys of the seed-dependent ones are not reused)
        from datus.backbones.registry import RANDOM_INIT_SEED

        return {**backbone, "init_seed": RANDOM_INIT_SEED}
    if weights is None or not Path(str(weights)).suffix:
        return backbone
    path = Path(str(weights)).expanduser().resolve()
    if not path.is_file():
        return backbone
    return {**backbone, "weights": str(path), "weights_file": files_fingerprint([("weights", path)])}


def resolve_files(container: dict) -> dict:
    """``container`` with the files it names identified: ``dataset.root`` made absolute (the same
    data named relatively from one folder and absolutely, or through a link, shares one cache entry,
    and one relative name used from two folders does not) and the backbone's checkpoint file by
    :func:`backbone_identity`."""
    container = dict(container)
    root = container["dataset"].get("root")
    if root is not None:
        container["dataset"] = {**container["dataset"], "root": str(Path(root).expanduser().resolve())}
    if isinstance(container.get("backbone"), dict):
        container["backbone"] = backbone_identity(container["backbone"])
    return container


def cache_settings(container: dict[str, Any]) -> dict[str, Any]:
    """The cache key's settings of a resolved config. A method may narrow or widen them
    (``Method.cache_key``)."""
    container = resolve_files(container)
    settings = {key: container[key] for key in SETTINGS_KEYS}
    # how mismatched masks are scored changes no backbone pass, nor does a setting left at the value that
    # means "as before it existed": such entries are left out, so keys made before them stay valid
    settings["dataset"] = {k: v for k, v in settings["dataset"].items() if k != "mask_size_mismatch"}
    if isinstance(settings.get("graph"), dict) and not settings["graph"].get("segment_blocks", True):
        settings["graph"] = {k: v for k, v in settings["graph"].items() if k != "segment_blocks"}
    if container.get("feature_head") is not None:  # none keeps the keys of runs made before heads existed
        settings["head"] = container["feature_head"]  # the key's name from before the group was renamed
    return settings


def run_settings(container: dict[str, Any]) -> dict[str, Any]:
    """What a run dir remembers of the resolved config that produced its pseudo masks."""
    container = resolve_files(container)
    settings = {key: container.get(key) for key in RUN_KEYS}
    if container.get("feature_head") is not None:
        settings["feature_head"] = container["feature_head"]
    return settings


def files_fingerprint(files: list[tuple[str, str | Path]]) -> str:
    """A short digest of ``(name, path)`` files by name and contents (:func:`datus.io.file_fingerprint`):
    changed by any added, removed, replaced or rewritten file, kept by a copy with new times."""
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name}\0{file_fingerprint(path)}\n".encode())
    return digest.hexdigest()[:16]


class RunConflictError(RuntimeError):
    """The output folder holds results of different settings (rerun with overwrite=true)."""


def changed_keys(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Top-level keys whose values differ between two settings dicts."""
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def check_settings(path: str | Path, settings: dict[str, Any], overwrite: bool, what: str) -> bool:
    """Record ``settings`` in ``path``; refuse if it already records different ones.

    Returns True when the folder held other settings and ``overwrite`` allows replacing them
    (the caller then clears the old outputs). Raises :class:`RunConflictError` naming the
    changed settings otherwise.
    """
    path = Path(path)
    replaced = False
    if path.is_file():
        try:
            previous = load_json(path)
        except (ValueError, UnicodeDecodeError) as err:  # truncated or garbled: what made the outputs is unknown
            if not overwrite:
                raise RunConflictError(f"{path} is damaged ({err}); it records what produced the {what} in "
                                       f"{path.parent}: pass overwrite=true to replace them") from None
            log.warning("overwrite=true: %s is damaged (%s); replacing the %s in %s", path, err, what, path.parent)
            previous = None
        if previous != settings:
            changed = ", ".join(changed_keys(previous, settings)) if isinstance(previous, dict) else "all"
            if not overwrite:
                raise RunConflictError(
                    f"{path.parent} holds {what} made with other settings (changed: {changed}); "
                    "choose another output dir or pass overwrite=true to replace them"
                )
            log.warning("overwrite=true: replacing %s of other settings in %s (changed: %s)", what, path.parent, changed)
            replaced = True
    if replaced or not path.is_file():
        write_json(path, settings)
    return replaced


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of ``settings`` (JSON with sorted keys) and the cache format."""
    text = json.dumps({"format": CACHE_FORMAT, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Touched in a cache entry whenever a run is handed it: ``python -m datus.cache prune`` reads it.
LAST_USED = ".last_used"


def cache_entry(cache_dir: str | Path, kind: str, settings: dict[str, Any]) -> Path:
    """``<cache_dir>/<kind>/<key>``: where outputs of ``settings`` are kept (created). Its ``.last_used``
    is touched, so ``python -m datus.cache prune`` knows what runs still ask for (:mod:`datus.cache`)."""
    folder = Path(cache_dir).expanduser() / kind / settings_key(settings)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / LAST_USED).touch()
    except OSError:  # a read-only cache shared by a group still serves its entries
        pass
    return folder


def global_rank() -> int:
    """This process's rank (0 without DDP): Lightning sets it from the launcher's environment, so it
    is known before the process group exists (what per-rank locks need)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


@contextmanager
def job_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive file lock on ``path`` while computing ``what``; wait (and say so) if taken."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another job is computing %s (lock %s); waiting to reuse its results", what, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def make_once(path: Path, settings: dict[str, Any], what: str, make: Callable[[], None]) -> bool:
    """Have ``make()`` write ``path`` (a trained file of a cache folder) unless it exists; True if this call made it.

    Under the folder's lock, checked again once held (another job may have made it meanwhile): a
    killed maker's temporaries are removed and the folder's ``config.json`` records ``settings``
    first, then ``make`` runs (resuming from whatever checkpoints it keeps in the folder).
    """
    from datus.io import remove_stale_temporaries

    path = Path(path)
    if path.is_file():
        log.info("%s reused: %s", what, path)
        return False
    with job_lock(path.parent / ".lock", f"{what} in {path.parent}"):
        if path.is_file():
            log.info("%s reused: %s", what, path)
            return False
        remove_stale_temporaries(path.parent)
        write_json(path.parent / "config.json", settings)
        make()
    return True


def shard_range(n: int, index: int, count: int) -> range:
    """The contiguous block of ``range(n)`` that shard ``index`` of ``count`` owns."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"discovery shard {index} of {count}: need 0 <= shard.index < shard.count")
    start, stop = n * index // count, n * (index + 1) // count
    return range(start, stop)


#: The file a failed job leaves in its folder (its error line; ``python -m datus.report`` shows it as failed).
FAILED_RUN = "failed.json"
#: The file inside a run folder that its run holds (an OS file lock) for its whole life.
RUN_LOCK = ".datus.lock"


@contextmanager
def hold_run_dir(path: str | Path) -> Iterator[Path]:
    """Hold the run folder ``path`` while the run lives: a second run into it is refused at once.

    The lock is the operating system's (``flock`` on ``path/.datus.lock``), so it ends with its process
    however that ends (crash, ``kill -9``): a folder left by a dead run is taken over, never stuck. The
    file names the holder (host, pid, start) for the refusal message. Only rank 0 holds it (DDP ranks
    share their run's folder).
    """
    import fcntl
    import os
    import socket
    import time

    path = Path(path)
    if global_rank() != 0:
        yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    lock = path / RUN_LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunConflictError(f"{path} is in use by another run ({holder}): wait for it to end, or pass another "
                               "hydra.run.dir (two runs into one folder would mix their outputs)") from None
    previous = _holder(fd)
    if previous:
        log.info("%s: taking over the folder of a run that ended (%s)", path, previous)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    try:
        yield path
    finally:
        os.ftruncate(fd, 0)  # ended: nobody holds it
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(fd: int) -> str:
    """``host <h>, pid <p>, since <t>`` from a lock file's contents ('' when empty or unreadable)."""
    import os

    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"host {info['host']}, pid {info['pid']}, since {info['started']}"
    except (ValueError, KeyError, OSError):
        return ""
