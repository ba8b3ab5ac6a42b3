"""systemd integration: sd_notify messages over $NOTIFY_SOCKET and a unit file for `launch`.

Only the datagram protocol (a few lines) is needed, so no libsystemd binding.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys


class Notifier:
    """Sends READY=1 / STATUS= / WATCHDOG=1 / STOPPING=1 when run under systemd; no-op otherwise."""

    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the supervisor on a listener that does not read (a full queue drops).
                sock.setblocking(False)
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode())
            return True
        except OSError:
            return False

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")


def _systemd_escape(text: str) -> str:
    """systemd expands %-specifiers in these values and $VARIABLES in ExecStart: keep both literal
    (a cap of 90% must reach launch as 90%). Callers refuse control characters before this."""
    return text.replace("%", "%%").replace("$", "$$")


def unit_file(launch_args: list[str], user: str | None = None, description: str | None = None) -> str:
    """A Type=notify unit that runs `baldr-ops launch` with the given arguments. A long-lived
    service re-asks its canary every 10 minutes unless the arguments say otherwise."""
    cut = launch_args.index("--") if "--" in launch_args else len(launch_args)  # after it: MAX's arguments
    own = launch_args[:cut]
    if not any(a == "--canary-every" or a.startswith("--canary-every=") or a == "--no-canary" for a in own):
        launch_args = [*own, "--canary-every", "10m", *launch_args[cut:]]
    exe = _systemd_escape(shlex.join([sys.executable, "-m", "baldr_ops", "launch", *launch_args]))
    lines = [
        "[Unit]",
        f"Description={_systemd_escape(description or 'MAX model server supervised by baldr-ops')}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exe}",
        "# Compiling a 31B model takes ~5 minutes; READY=1 comes only after the canary answers.",
        "TimeoutStartSec=30min",
        "WatchdogSec=60s",
        "Restart=on-failure",
        "RestartSec=5s",
        "RestartSteps=5",
        "RestartMaxDelaySec=5min",
        "# 2 = usage/config error from baldr-ops: restarting will not help.",
        "RestartPreventExitStatus=2",
        "KillMode=control-group",
        "TimeoutStopSec=60s",
        "ManagedOOMPreference=avoid",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if user:
        lines.append(f"User={user}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)
