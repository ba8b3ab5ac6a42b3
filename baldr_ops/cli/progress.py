"""Live progress on stderr for the long commands (launch, compile): one renderer, shared."""

from __future__ import annotations

import sys
import time


class ConsoleReporter:
    """Live progress on stderr: one updating line on a terminal, one line per phase otherwise."""

    def __init__(self, verbose: bool = False, stream=None):
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self._last_phase = None

    def _emit(self, text: str, transient: bool = False) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.0f}s]"
        if self.tty and transient:
            self.stream.write(f"\r\033[K{stamp} {text}")
        else:
            clear = "\r\033[K" if self.tty else ""
            self.stream.write(f"{clear}{stamp} {text}\n")
        self.stream.flush()

    def phase(self, status) -> None:
        if status.state == "ready":
            return  # ready() says it, with the URL
        detail = status.phase_detail
        if status.compile_elapsed_s is not None and status.state == "compiling":
            detail = f"compiling ({status.compile_elapsed_s:.0f} s in MAX's compiler)"
        changed = status.state != self._last_phase
        self._last_phase = status.state
        if changed or self.tty:
            self._emit(f"{status.state:<10} {detail}", transient=not changed)

    def line(self, text: str) -> None:
        if self.verbose:
            self._emit(f"max| {text}")

    def ready(self, status, gate) -> None:
        self._emit(f"ready      {status.url} serves {status.served_name!r} ({gate.detail})")

    def exited(self, verdict, postmortem) -> None:
        where = f"; post-mortem: {postmortem}" if postmortem else ""
        self._emit(f"exited     {verdict.summary}{where}")

    def message(self, text: str) -> None:
        self._emit(text)
