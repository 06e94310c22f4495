"""SIGTERM (SLURM preemption, scancel, timeout) and Ctrl+C end a run cleanly instead of mid-write."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("datus")

_NAMES = {signal.SIGTERM: "SIGTERM received", signal.SIGINT: "interrupted (Ctrl+C)"}


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM or SIGINT; exits with status 128 + the signal number like an
    unhandled signal (143, 130)."""


def exit_on_sigterm(resume_hint: str = "rerun the same command to resume") -> None:
    """Turn the first SIGTERM or Ctrl+C into :class:`Terminated`, raised wherever the main thread is.

    The exception unwinds like an error: Lightning calls the callbacks' ``on_exception`` (the
    writers flush every finished image), atomic writes delete their temporary file, and the
    process exits with 143 (SIGTERM) or 130 (Ctrl+C) after one log line saying what was kept and
    how to resume, never a traceback. Later signals are ignored so the cleanup itself is not
    interrupted. During ``trainer.fit``/``predict`` Lightning chains this handler after its own
    (which also forwards the signal to DDP workers).
    """

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log.warning("%s: stopping; finished work is kept on disk, %s", _NAMES.get(signum, f"signal {signum}"),
                    resume_hint)
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
