"""Atomic file writes: a killed process never leaves a half-written file behind."""

from __future__ import annotations

import atexit
import errno
import functools
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

#: Suffix of the temporary files behind atomic writes (``.<name>.<host>.<pid>.<random>.tmp``).
TMP_SUFFIX = ".tmp"


def _owner() -> str:
    return f"{socket.gethostname().replace('.', '_')}.{os.getpid()}"


#: This process's temporary files, each added before it exists and dropped once it is gone (renamed
#: or deleted). A signal handler's exception (SIGTERM's ``Terminated``, Ctrl+C) lands between any two
#: bytecodes, also ones no ``try`` covers yet (inside ``contextlib``'s ``__enter__``, between a file's
#: creation and the line that binds its name); whatever such an interrupt left is deleted at exit.
_IN_FLIGHT: set[Path] = set()


@atexit.register
def _remove_own_temporaries() -> None:
    for tmp in list(_IN_FLIGHT):
        tmp.unlink(missing_ok=True)
        _IN_FLIGHT.discard(tmp)


def _temporary(folder: Path, name: str) -> Path:
    """A fresh temporary name beside ``folder/name``, registered in :data:`_IN_FLIGHT`: host and pid
    (what the stale-file cleanup reads) and 64 random bits, so no other writer ever picks it."""
    tmp = folder / f".{name}.{_owner()}.{secrets.token_hex(8)}{TMP_SUFFIX}"
    _IN_FLIGHT.add(tmp)
    return tmp


def _discard(tmp: Path) -> None:
    """Delete ``tmp`` if it still exists (it was renamed when the write succeeded); unregister it."""
    tmp.unlink(missing_ok=True)
    _IN_FLIGHT.discard(tmp)


def _create(tmp: Path) -> int:
    """Create ``tmp`` for writing (never an existing file) with the permissions any new file gets
    under the user's umask (``tempfile.mkstemp`` would make every output 0600, unreadable to the
    group a cluster shares results with)."""
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path, max_age_s: float = 86400.0) -> list[Path]:
    """Delete temporary files that a killed process left in ``folder`` (recursively); returns them.

    A SIGKILL cannot be caught, so the next run cleans up: a temporary file is stale when its
    writer (host and pid are in its name) is no longer running on this host, or, written from
    another host, when it is older than ``max_age_s``. Live writers' files are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = socket.gethostname().replace(".", "_")
    removed = []
    for path in folder.rglob(f".*{TMP_SUFFIX}"):
        parts = path.name.split(".")
        try:
            owner_host, pid = parts[-4], int(parts[-3])
        except (IndexError, ValueError):
            continue  # not one of ours
        stale = (not _alive(pid)) if owner_host == host else time.time() - path.stat().st_mtime > max_age_s
        if stale:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def scratch_file(folder: str | Path, name: str) -> Iterator[Path]:
    """A temporary file in ``folder`` (deleted afterwards; a killed run's is removed by the next)."""
    folder = Path(folder)
    tmp = _temporary(folder, name)
    try:
        with named_write_errors(folder / name):
            folder.mkdir(parents=True, exist_ok=True)
            os.close(_create(tmp))
        yield tmp
    finally:
        _discard(tmp)


class WriteError(OSError):
    """A file could not be written (disk full, quota, read-only or forbidden folder); names the file.

    Work already finished is kept (every write is atomic), so freeing space and rerunning the same
    command resumes.
    """

    def __str__(self) -> str:
        return str(self.strerror)  # the whole message, the path included


#: errno -> what to do about it, for the write errors a user can fix.
_WRITE_HINTS = {
    errno.ENOSPC: "free space on that disk (or point the setting at another one)",
    errno.EDQUOT: "free space within your quota (or point the setting at another disk)",
    errno.EROFS: "that file system is read-only: point the setting at a writable folder",
    errno.EACCES: "check the folder's permissions (or point the setting at a writable folder)",
    errno.EPERM: "check the folder's permissions (or point the setting at a writable folder)",
    errno.EIO: "check that disk (or point the setting at another one)",
}


@contextmanager
def named_write_errors(path: str | Path) -> Iterator[None]:
    """Turn an OSError a user can fix (disk full, read-only, ...) into a :class:`WriteError` naming ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        code, reason = err.errno, err.strerror
        if code is None and "written" in str(err):  # a short write without errno (numpy: "N requested and M written")
            code, reason = errno.ENOSPC, f"{err} (a short write: the disk is probably full)"
        elif code is None:  # another write failure without errno: still the user's disk, in one line
            code, reason = errno.EIO, str(err) or type(err).__name__
        hint = _WRITE_HINTS.get(code)
        if hint is None:
            raise
        raise WriteError(code, f"cannot write {path}: {reason}; {hint}, then rerun the same command "
                         "(finished work is kept)", str(path)) from err


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; rename it over ``path`` on success.

    A disk that fills up (or any write error a user can fix) raises :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    with named_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(path.parent, path.name)  # named and registered before the file exists
        try:
            with os.fdopen(_create(tmp), "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            _discard(tmp)  # gone already when renamed


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(file)`` on a temporary file and move it to ``path`` atomically."""
    with atomic_open(path) as f:
        write(f)
    return Path(path)


def atomic_symlink(link: str | Path, target: str | Path) -> Path:
    """Make ``link`` a symlink to the directory ``target``, replacing a link to anything else atomically.

    Safe when several processes (DDP ranks) make the same link at once: the link is made under a
    temporary name and renamed over ``link``, never checked and then created. A real file or
    directory at ``link`` is left alone (raises :class:`FileExistsError` naming it).
    """
    link, target = Path(link), Path(target)
    if link.is_symlink() and link.resolve() == target.resolve():
        return link
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a link: move it away to link it to {target}")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(link.parent, link.name)
    try:
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, link)
    finally:
        _discard(tmp)
    return link


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_npz(path: str | Path, **arrays: Any) -> Path:
    """``arrays`` as one ``.npz`` at ``path``, atomically (never pickled)."""
    import numpy as np

    return atomic_write(path, lambda f: np.savez(f, **arrays))


#: ``file_digest``'s memo: a file's digest by its identity and stat, so a split is read once per process.
_DIGESTS: dict[tuple, str] = {}
#: Where digests are also kept between processes (:func:`remember_digests`); None: this process only.
_MEMO_FOLDER: Path | None = None
#: The memo files read or grown by this process: memo file -> {file name: [dev, ino, size, mtime, ctime, digest]}.
_MEMOS: dict[Path, dict[str, list]] = {}
_UNSAVED: set[Path] = set()
#: How many digests this process hashed since it last saved (the periodic save counts these, not memo hits).
_HASHED_SINCE_SAVE = 0
#: Save the memo after this many newly hashed files, so a long first pass over a large split keeps its progress.
SAVE_EVERY = 5000


def remember_digests(folder: str | Path | None) -> None:
    """Keep :func:`file_digest`'s results in ``folder`` (a JSON file per directory of hashed files), so
    a later process (the next run, a DDP rank, a SLURM task) reads a file's bytes again only when its
    stat changed, not every image of a split at every start. None: within this process only."""
    global _MEMO_FOLDER
    save_digests()
    _MEMO_FOLDER = None if folder is None else Path(folder).expanduser()
    _MEMOS.clear()


@functools.lru_cache(maxsize=4096)
def _memo_name(directory: Path) -> str:
    """The memo file's name for the files in ``directory`` (resolved once per folder, not per file)."""
    return f"{hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16]}.json"


def _memo_file(path: Path) -> Path:
    return _MEMO_FOLDER / _memo_name(path.parent.absolute())  # absolute: a later chdir cannot mislead the cache


def _memo(memo_file: Path) -> dict[str, list]:
    if memo_file not in _MEMOS:
        try:
            data = load_json(memo_file)
            _MEMOS[memo_file] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):  # none yet, or damaged: a memo is only a shortcut
            _MEMOS[memo_file] = {}
    return _MEMOS[memo_file]


def save_digests() -> None:
    """Write the digests this process added to the memo folder (merged with what other processes
    wrote there meanwhile); called at exit, and every ``SAVE_EVERY`` newly hashed files."""
    global _HASHED_SINCE_SAVE
    for memo_file in sorted(_UNSAVED):
        try:
            on_disk = load_json(memo_file)
        except (OSError, ValueError):
            on_disk = {}
        merged = {**(on_disk if isinstance(on_disk, dict) else {}), **_MEMOS.get(memo_file, {})}
        try:
            write_json(memo_file, merged)
        except OSError as err:  # a read-only or full cache: the next process reads the files again
            log.warning("could not keep file digests in %s: %s", memo_file, err)
    _UNSAVED.clear()
    _HASHED_SINCE_SAVE = 0


atexit.register(save_digests)


def _hash_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """A short sha256 of a file's bytes: what a cache keys on, so a rewritten file (a retrained head, a
    checkpoint after another epoch, a replaced image, even with its old size and times) never reuses old
    results and one copied in again with new times still does. Read once while its stat stays the
    same (the change time moves on every write, and no one can set it back): once per process, or
    once for all with :func:`remember_digests`."""
    global _HASHED_SINCE_SAVE
    stat = os.stat(path)
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)  # the file, not its name
    if key in _DIGESTS:
        return _DIGESTS[key]
    memo = memo_file = None
    if _MEMO_FOLDER is not None:
        memo_file = _memo_file(Path(path))
        memo = _memo(memo_file)
        entry = memo.get(Path(path).name)
        if isinstance(entry, list) and len(entry) == 6 and tuple(entry[:5]) == key:
            _DIGESTS[key] = str(entry[5])
            return _DIGESTS[key]
    _DIGESTS[key] = _hash_file(path)
    if memo is not None:
        memo[Path(path).name] = [*key, _DIGESTS[key]]
        _UNSAVED.add(memo_file)
        _HASHED_SINCE_SAVE += 1
        if _HASHED_SINCE_SAVE >= SAVE_EVERY:
            save_digests()
    return _DIGESTS[key]


def file_fingerprint(path: str | Path) -> str:
    """:func:`file_digest`, or ``"unreadable"`` for a file that cannot be read: a run names such an image
    where it reads it (and skips it), it does not fail while making a cache key."""
    try:
        return file_digest(path)
    except OSError:
        return "unreadable"


def load_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_figure(path: str | Path, fig, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plain(value: Any) -> Any:
    """Mappings and sequences (e.g. OmegaConf nodes) as plain dicts and lists, recursively: what
    JSON and ``torch.load(weights_only=True)`` accept."""
    from collections.abc import Mapping, Sequence

    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value
