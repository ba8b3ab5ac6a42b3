"""A child run in its own session, and ending its whole tree.

MAX (like most engines) forks workers that outlive a killed parent, so "stop the server" means
"stop every process in its session": SIGTERM to all, a grace period, SIGKILL to what is left.
Shared by launch's supervisor, compile and the memory guard's `guard -- CMD`. Processes are found
and signalled through psutil, which checks a pid's start time so a reused pid is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil


# Events an owner loop receives about its child, from the threads that watch it.

@dataclass(frozen=True)
class LogLine:
    """A line of the child's output (from the pump that reads it)."""

    text: str


@dataclass(frozen=True)
class PumpEnded:
    """The child's output closed: it exited, or is about to."""


@dataclass(frozen=True)
class SignalReceived:
    """A signal to the owner itself (its handler only queues this)."""

    signum: int


def session_members(sid: int) -> list[psutil.Process]:
    """Live processes of session ``sid`` other than this one; zombies (waiting for their parent
    or init, holding no memory) are left out."""
    members = []
    me = os.getpid()
    for proc in psutil.process_iter(["status"]):
        if proc.pid == me:
            continue
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except OSError:  # gone meanwhile, or not ours to ask about
            continue
    return members


def signal_session(sid: int, sig: int) -> int:
    """Send ``sig`` to every live process of session ``sid``; returns how many were signalled."""
    sent = 0
    for proc in session_members(sid):
        try:
            proc.send_signal(sig)
            sent += 1
        except psutil.Error:
            continue
    return sent


def end_session(proc: subprocess.Popen, grace_s: float, on_kill: Callable[[str], None] | None = None,
                poll_s: float = 0.2, wait: Callable[[float], None] = time.sleep,
                kill_now: Callable[[], str | None] = lambda: None) -> int:
    """TERM every process in ``proc``'s session (it must have been started with
    ``start_new_session=True``), wait up to ``grace_s``, KILL the rest, reap ``proc``.

    Also right after the leader died on its own: its workers may still run. ``wait`` is how to
    pass time (an owner loop handles its events meanwhile); ``kill_now`` returns a reason to skip
    the rest of the grace. Returns the leader's return code."""
    sid = proc.pid
    signal_session(sid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    why = None
    while time.monotonic() < deadline and session_members(sid):
        proc.poll()  # reap the leader as soon as it exits
        why = kill_now()
        if why:
            break
        wait(min(poll_s, max(0.0, deadline - time.monotonic())))
    if session_members(sid):
        if on_kill is not None:
            on_kill(f"{why}: SIGKILL" if why else f"still running after {grace_s:.0f} s grace: SIGKILL")
        signal_session(sid, signal.SIGKILL)
        deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return proc.wait()
