"""How a command ends on an error: one line naming the file or the setting, the traceback on request.

Bad input and bad settings are the user's to fix, so ``discover.py``, ``train.py``,
``evaluate.py`` and the module commands print ``error: <message>`` (the message names the file
or the setting) and exit 1; a bug still shows its traceback. ``DATUS_DEBUG=1`` (or Hydra's own
``HYDRA_FULL_ERROR=1``) shows every traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from datus.backbones.weights import WeightsError
from datus.runs import RunConflictError
from datus.shards import DamagedShardError

__all__ = ["DEBUG_VARIABLE", "error_line", "user_error", "run_command"]

#: The environment variable that shows the full traceback of every error.
DEBUG_VARIABLE = "DATUS_DEBUG"
#: Set by :func:`run_command` so that processes it starts (DDP ranks) know who set HYDRA_FULL_ERROR.
_OWNED = "_DATUS_OWNS_HYDRA_FULL_ERROR"
#: Errors that are about the user's files, settings or machine (each names what to fix).
_USER_ERRORS = (ValueError, RunConflictError, DamagedShardError, WeightsError)


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, _USER_ERRORS):
        return True
    return isinstance(err, OSError) and err.errno is not None  # disk full, permission, missing file


def user_error(err: BaseException | None) -> BaseException | None:
    """The error a user can fix in ``err``'s chain (Hydra wraps a target's own error), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        wrapper = type(err).__module__.startswith(("hydra", "omegaconf"))
        if _is_user_error(err) and not wrapper:
            return err
        err = err.__cause__ or (err.__context__ if wrapper else None)
    return None


def _message(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    elif isinstance(err, OSError) and err.strerror and not err.filename and text.startswith("[Errno"):
        text = err.strerror
    return text


#: Failed jobs of this process's Hydra run or multirun (``(overrides, error line)``), recorded by
#: :class:`datus.cli.multirun.ReportFailures`: Hydra raises the first failure only, so all are listed here.
FAILED_JOBS: list[tuple[str, str]] = []
#: Set when a multirun starts (its failures are listed by job).
MULTIRUN: list[bool] = []


def _failed_jobs_message() -> str | None:
    if not MULTIRUN or not FAILED_JOBS:
        return None
    lines = "\n".join(f"  {overrides or '(no overrides)'}: {line}" for overrides, line in FAILED_JOBS)
    return f"{len(FAILED_JOBS)} job(s) of the multirun failed (the others' outputs are kept):\n{lines}"


def error_line(err: BaseException) -> str:
    """One line for ``err``: ``error: <message>`` for a user error, else its type and message (a bug)."""
    found = user_error(err)
    if found is not None:
        return f"error: {_message(found)}"
    return f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__


def _debugging() -> bool:
    return bool(os.environ.get(DEBUG_VARIABLE)) or (
        bool(os.environ.get("HYDRA_FULL_ERROR")) and not os.environ.get(_OWNED))


def _to_log_files(line: str) -> None:
    """Add the error to the run's log file (``<task>.log``) without printing it twice."""
    record = logging.LogRecord("datus", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_command(main: Callable[[], Any]) -> Any:
    """Run an entry point's ``main``; a user error prints ``error: <message>`` and exits 1.

    Hydra's own errors (an unknown override, a bad config) keep Hydra's short message.
    """
    if _debugging():
        return main()
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; the decision is made here
    os.environ[_OWNED] = "1"
    try:
        return main()
    except Exception as err:  # noqa: BLE001 - re-raised unless it is the user's to fix
        listed = _failed_jobs_message()
        if listed is not None:  # a multirun: every failed job, not only the one Hydra raised
            print(f"{listed}\n(each job's error is also in its folder's log and failed.json; set {DEBUG_VARIABLE}=1 "
                  "to see the tracebacks)", file=sys.stderr)
            raise SystemExit(1) from None
        found = user_error(err)
        if found is not None:
            line = f"error: {_message(found)}"
            _to_log_files(line)
            print(f"{line}\n(set {DEBUG_VARIABLE}=1 to see the traceback)", file=sys.stderr)
            raise SystemExit(1) from None
        if isinstance(err, (HydraException, OmegaConfBaseException)):
            print(str(err), file=sys.stderr)
            if isinstance(err.__cause__, OmegaConfBaseException):
                print(str(err.__cause__), file=sys.stderr)
            print(f"(set {DEBUG_VARIABLE}=1 to see the traceback)", file=sys.stderr)
            raise SystemExit(1) from None
        raise
