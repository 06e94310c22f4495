"""Atomic writes under interruption, links made by several processes at once, and the permissions of what they write."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from datus.data.demo import DEMO_FILES, skimage_data_dir
from datus.io import TMP_SUFFIX, atomic_symlink, atomic_write, remove_stale_temporaries, scratch_file
from tests.conftest import PROJECT_ROOT

#: Writes files atomically while a timer interrupts it at random moments, as SIGTERM's handler
#: raises ``Terminated`` wherever the main thread is; prints how many writes were interrupted.
INTERRUPTED_WRITER = r"""
import random, signal, sys
from pathlib import Path
from datus.io import atomic_write, scratch_file

class Interrupted(BaseException):
    pass

armed = False
def handler(signum, frame):
    if armed:
        raise Interrupted

signal.signal(signal.SIGALRM, handler)
out, rng, interrupted, n = Path(sys.argv[1]), random.Random(0), 0, int(sys.argv[2])
for i in range(n):
    try:
        armed = True
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(0, 0.001))
        if i % 2:
            atomic_write(out / f"out{i % 20}.bin", lambda f: f.write(b"x" * 1000))
        else:
            with scratch_file(out, "spill.f16") as spill:
                spill.write_bytes(b"y" * 1000)
        armed = False
    except Interrupted:
        armed = False
        interrupted += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print(interrupted)
"""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_an_interrupt_at_any_moment_of_a_write_leaves_no_temporary_file(tmp_path):
    """A signal can land anywhere, also between a temporary file's creation and the first line
    that could clean it up (``tempfile.mkstemp`` and ``contextlib`` run many bytecodes there: the
    previous code left a file in 2-6% of such interrupts, which a SIGTERM'd run left behind)."""
    n = 1500
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_WRITER, str(tmp_path), str(n)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300, check=True)
    interrupted = int(done.stdout)
    assert n // 10 < interrupted < n  # interrupted often, at varied moments, and some writes finished
    assert list(tmp_path.glob(f".*{TMP_SUFFIX}")) == []
    assert {p.name for p in tmp_path.iterdir()} <= {f"out{i}.bin" for i in range(1, 20, 2)}
    assert all(p.read_bytes() == b"x" * 1000 for p in tmp_path.iterdir())  # never a partial file


def test_outputs_get_the_users_umask_permissions_not_0600(tmp_path):
    """Results on a cluster are shared with a group: a written file is as readable as any new file."""
    previous = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "masks" / "a.png", lambda f: f.write(b"png"))
        with scratch_file(tmp_path, "spill") as spill:
            scratch_mode = stat.S_IMODE(spill.stat().st_mode)
        os.umask(0o027)
        group_only = atomic_write(tmp_path / "b.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert scratch_mode == 0o644
    assert stat.S_IMODE(group_only.stat().st_mode) == 0o640


def test_a_dead_writers_temporaries_are_removed_and_a_live_ones_kept(tmp_path):
    """What a SIGKILL leaves (the name carries host and pid) is cleaned by the next run."""
    with scratch_file(tmp_path / "labeling", "live.f16") as live:
        dead = live.with_name(live.name.replace(f".{os.getpid()}.", ".999999999."))
        dead.write_bytes(b"left by a killed run")
        removed = remove_stale_temporaries(tmp_path)
        assert removed == [dead] and live.exists() and not dead.exists()


#: Links ``<dir>/segments`` to one of two folders as fast as it can, as every DDP rank does after discovery.
RACING_LINKER = r"""
import sys
from pathlib import Path
from datus.io import atomic_symlink
root = Path(sys.argv[1])
for i in range(300):
    atomic_symlink(root / "run" / "segments", root / ("a" if i % 2 else "b"))
"""


def test_processes_linking_the_same_path_at_once_never_fail_and_leave_a_link(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"from-{name}").touch()
    procs = [subprocess.Popen([sys.executable, "-c", RACING_LINKER, str(tmp_path)], cwd=PROJECT_ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()  # check-then-create raised FileExistsError here
    link = tmp_path / "run" / "segments"
    assert link.is_symlink() and link.resolve() in {tmp_path / "a", tmp_path / "b"}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["segments"]  # no temporary links left
    atomic_symlink(link, tmp_path / "a")  # a link elsewhere, or a dangling one, is replaced
    assert (link / "from-a").exists()
    (tmp_path / "a").rename(tmp_path / "gone")
    atomic_symlink(link, tmp_path / "b")
    assert (link / "from-b").exists()
    (tmp_path / "real").mkdir()
    with pytest.raises(FileExistsError, match="not a link"):  # a run's own folder is never replaced
        atomic_symlink(tmp_path / "real", tmp_path / "a")


#: Digests the files named on the command line with the memo in argv[1]; prints them and which files it read.
DIGESTER = r"""
import json, sys
import datus.io as io
read = []
hash_file = io._hash_file
io._hash_file = lambda path: read.append(str(path)) or hash_file(path)
io.remember_digests(sys.argv[1])
print(json.dumps({"digests": [io.file_digest(p) for p in sys.argv[2:]], "read": read}))
"""


def _digest_in_a_new_process(memo, paths):
    proc = subprocess.run([sys.executable, "-c", DIGESTER, str(memo), *map(str, paths)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_digests_are_kept_between_processes_and_a_changed_file_is_read_again(tmp_path):
    """A run's start used to read every image of its split to key the caches (tens of seconds for a
    COCO-sized split, again in every process); with the memo a new process reads only changed files."""
    photos = [skimage_data_dir() / name for name in DEMO_FILES[:4]]  # real photos a package ships
    data = tmp_path / "data"
    data.mkdir()
    paths = []
    for i, photo in enumerate(photos):
        paths.append(data / f"{i}{photo.suffix}")
        paths[-1].write_bytes(photo.read_bytes())
    memo = tmp_path / "cache" / "digests"
    first = _digest_in_a_new_process(memo, paths)
    assert sorted(first["read"]) == sorted(map(str, paths)) and len(set(first["digests"])) == len(paths)
    again = _digest_in_a_new_process(memo, paths)
    assert again == {"digests": first["digests"], "read": []}  # nothing read: every stat matched
    stat = paths[1].stat()  # rewritten in place with its old size and times: only the change time moves
    paths[1].write_bytes(paths[2].read_bytes()[:stat.st_size].ljust(stat.st_size, b"\0"))
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = _digest_in_a_new_process(memo, paths)
    assert changed["read"] == [str(paths[1])] and changed["digests"][1] != first["digests"][1]
    assert [d for i, d in enumerate(changed["digests"]) if i != 1] == [d for i, d in enumerate(first["digests"]) if i != 1]
    (memo / next(p.name for p in memo.iterdir())).write_text("{garbled")  # a damaged memo is only a miss
    assert _digest_in_a_new_process(memo, paths)["digests"] == changed["digests"]


def test_the_digest_memo_is_saved_every_so_many_newly_hashed_files_not_memo_hits(tmp_path, monkeypatch):
    """A long first pass keeps its progress: the memo is written after every ``SAVE_EVERY`` files read,
    however many digests were answered from the memo in between."""
    import datus.io as io

    photos = [skimage_data_dir() / name for name in DEMO_FILES[:4]]
    paths = []
    for i, photo in enumerate(photos):
        paths.append(tmp_path / "data" / f"{i}{photo.suffix}")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_bytes(photo.read_bytes())
    memo = tmp_path / "digests"
    monkeypatch.setattr(io, "SAVE_EVERY", 2)

    def on_disk():
        files = list(memo.glob("*.json")) if memo.is_dir() else []
        return set(json.loads(files[0].read_text())) if files else set()

    try:
        monkeypatch.setattr(io, "_DIGESTS", {})
        io.remember_digests(memo)
        io.file_digest(paths[0])
        assert on_disk() == set()
        io.file_digest(paths[1])
        assert on_disk() == {"0" + paths[0].suffix, "1" + paths[1].suffix}
        monkeypatch.setattr(io, "_DIGESTS", {})  # as in a new process: answers come from the memo file
        io.remember_digests(memo)
        io.file_digest(paths[0])  # a memo hit: not a file read, not counted
        io.file_digest(paths[2])
        assert paths[2].name not in on_disk()  # one file read since the last save
        io.file_digest(paths[3])
        assert {paths[2].name, paths[3].name} <= on_disk()
    finally:
        io.remember_digests(None)
