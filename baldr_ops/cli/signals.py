"""SIGTERM for commands: ended as SIGINT ends them, so that their cleanup runs."""

from __future__ import annotations

from baldr_ops.errors import Terminated


def _terminate(signum, _frame):
    raise Terminated(signum)


def end_on_sigterm() -> None:
    """SIGTERM ends the command as SIGINT does: finally blocks run (child trees ended, scratch files
    removed). Commands that supervise install their own handlers on top."""
    import signal  # here, not at the top: doctor's start-up skips it (0.6 ms, issue 12's budget)

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
