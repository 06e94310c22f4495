"""Cache housekeeping: ``python -m datus.cache list|prune [--cache-dir DIR]``.

Every cached stage lives in ``<cache_dir>/<kind>/<key>/`` (:func:`datus.runs.cache_entry`), keyed on
its settings and on the bytes of its inputs. An entry whose inputs changed (a dataset copied in anew,
a head retrained, a backbone file replaced) is never read again, but it stays on disk: a sweep over
backbones and K fills a disk in a few weeks. :func:`datus.runs.cache_entry` stamps ``.last_used`` on
every entry it hands to a run, so ``prune --unused-days N`` removes exactly what no run has asked
for in N days; an entry a running job holds the lock of is never removed. ``list`` shows what is
kept, by kind, with sizes and last use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from datus.runs import LAST_USED

#: Folders of the cache that are not ``<kind>/<key>`` entries: the unpacked packaged weights and the
#: file-digest memo (both small, both read by every run); listed, never pruned.
NOT_ENTRIES = frozenset({"weights", "digests"})
#: An entry being removed is first renamed to ``<kind>/.removing-<key>-<pid>`` (a killed prune leaves it).
REMOVING = ".removing-"


@dataclass
class Entry:
    """One ``<kind>/<key>`` folder of the cache."""

    kind: str
    path: Path
    bytes: int
    last_used: float  # seconds since the epoch

    @property
    def days_unused(self) -> float:
        return max(0.0, (time.time() - self.last_used) / 86400)


def default_cache_dir() -> Path:
    """The cache ``conf/paths/default.yaml`` uses: ``$DATUS_CACHE``, else ``~/.cache/datus``."""
    return Path(os.environ.get("DATUS_CACHE") or "~/.cache/datus").expanduser()


def _walk(folder: Path) -> tuple[int, float]:
    """Total bytes under ``folder`` and the newest modification time of anything in it."""
    size, newest = 0, folder.stat().st_mtime
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name), follow_symlinks=False)
            except OSError:  # removed meanwhile by a job finishing its temporaries
                continue
            size += stat.st_size
            newest = max(newest, stat.st_mtime)
    return size, newest


def entries(cache_dir: str | Path) -> list[Entry]:
    """Every ``<kind>/<key>`` entry of ``cache_dir``, oldest use first. An entry made before runs stamped
    their use counts as used when anything in it was last written."""
    root = Path(cache_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--cache-dir {root}: no such folder (the runs' cache_dir / paths.cache_dir)")
    found = []
    for kind in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in NOT_ENTRIES):
        for folder in sorted(p for p in kind.iterdir() if p.is_dir() and not p.name.startswith(REMOVING)):
            size, newest = _walk(folder)
            stamp = folder / LAST_USED
            found.append(Entry(kind.name, folder, size, stamp.stat().st_mtime if stamp.exists() else newest))
    return sorted(found, key=lambda e: e.last_used)


def _held(entry: Entry) -> bool:
    """Whether a running job holds one of the entry's locks (``.lock*``: it is computing into it)."""
    from filelock import FileLock, Timeout

    for path in entry.path.glob(".lock*"):
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
    return False


def prune(cache_dir: str | Path, *, unused_days: float, kinds: list[str] | None = None,
          dry_run: bool = False) -> tuple[list[Entry], list[Entry]]:
    """Remove the entries no run has used for ``unused_days`` days (only of ``kinds`` if given);
    returns (removed, kept because a job holds their lock). ``dry_run``: remove nothing."""
    if not unused_days >= 0:  # also NaN, which no age would reach (a prune that silently removes nothing)
        raise ValueError(f"--unused-days {unused_days}: a number of days >= 0")
    every = entries(cache_dir)
    if kinds:
        unknown = sorted(set(kinds) - {e.kind for e in every})
        if unknown:
            known = ", ".join(sorted({e.kind for e in every})) or "none"
            raise ValueError(f"--kind {','.join(unknown)}: no such kind in {cache_dir} (kinds: {known})")
    old = [e for e in every if e.days_unused >= unused_days and (not kinds or e.kind in kinds)]
    removed, busy = [], []
    if not dry_run:  # what an earlier prune, killed while removing, left behind
        for leftover in Path(cache_dir).expanduser().glob(f"*/{REMOVING}*"):
            shutil.rmtree(leftover, ignore_errors=True)
    for entry in old:
        if _held(entry):
            busy.append(entry)
            continue
        if not dry_run:
            # renamed first, so a run never finds a half-removed entry under its key (it recomputes instead)
            doomed = entry.path.with_name(f"{REMOVING}{entry.path.name}-{os.getpid()}")
            os.replace(entry.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        removed.append(entry)
    return removed, busy


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def format_list(every: list[Entry], *, detail: bool = False) -> str:
    """The cache by kind (entries, size, days since the most and least recent use); ``detail``: each entry."""
    lines = ["| kind | entries | size | last used (days ago) | least recently used (days ago) |", "|---|---|---|---|---|"]
    for kind in sorted({e.kind for e in every}):
        group = [e for e in every if e.kind == kind]
        lines.append(f"| {kind} | {len(group)} | {_size(sum(e.bytes for e in group))} | "
                     f"{min(e.days_unused for e in group):.1f} | {max(e.days_unused for e in group):.1f} |")
    lines.append(f"| all | {len(every)} | {_size(sum(e.bytes for e in every))} | | |")
    if detail:
        lines += ["", "| entry | size | last used (days ago) |", "|---|---|---|"]
        lines += [f"| {e.kind}/{e.path.name} | {_size(e.bytes)} | {e.days_unused:.1f} |" for e in every]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datus.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $DATUS_CACHE or ~/.cache/datus")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="what the cache holds, by kind")
    listing.add_argument("--entries", action="store_true", help="also every entry, least recently used first")
    cut = sub.add_parser("prune", help="remove the entries no run has used for some days")
    cut.add_argument("--unused-days", type=float, required=True,
                     help="remove entries unused for this many days (0: every entry no job holds the lock of; a "
                          "run that is only reading an entry holds none, so prune while no run uses the cache)")
    cut.add_argument("--kind", default=None, help="only these kinds, comma-separated (e.g. features,discovery)")
    cut.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    args = parser.parse_args(argv)
    cache_dir = (args.cache_dir or default_cache_dir()).expanduser()
    try:
        if args.command == "list":
            print(format_list(entries(cache_dir), detail=args.entries))
            return
        kinds = [k.strip() for k in args.kind.split(",") if k.strip()] if args.kind else None
        removed, busy = prune(cache_dir, unused_days=args.unused_days, kinds=kinds, dry_run=args.dry_run)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        print(f"{verb} {entry.kind}/{entry.path.name} ({_size(entry.bytes)}, unused for {entry.days_unused:.1f} days)")
    for entry in busy:
        print(f"kept {entry.kind}/{entry.path.name}: a running job holds its lock", file=sys.stderr)
    left = "nothing removed (--dry-run)" if args.dry_run else f"{len(entries(cache_dir))} entries left in {cache_dir}"
    print(f"{verb} {len(removed)} entries, {_size(sum(e.bytes for e in removed))}; {left}")


if __name__ == "__main__":
    main()
