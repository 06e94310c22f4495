"""SIGTERM (SLURM preemption, scancel, timeout) ends a run cleanly instead of mid-write."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("datus")


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM; exits with status 128 + 15 like an unhandled SIGTERM."""


def exit_on_sigterm(resume_hint: str = "rerun the same command to resume") -> None:
    """Turn the first SIGTERM into :class:`Terminated`, raised wherever the main thread is.

    The exception unwinds like Ctrl+C: Lightning calls the callbacks' ``on_exception`` (the
    writers flush every finished image), atomic writes delete their temporary file, and the
    process exits with 143 after one clear log line. Later SIGTERMs are ignored so the cleanup
    itself is not interrupted. During ``trainer.fit``/``predict`` Lightning chains this handler
    after its own (which also forwards the signal to DDP workers).
    """

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.warning("SIGTERM received: stopping; finished work is kept on disk, %s", resume_hint)
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
