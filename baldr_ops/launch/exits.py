"""Why did the server exit? Classify from the exit status, the log and the kernel's evidence.

The class decides the restart policy: configuration errors are never retried, memory kills are
retried only after the memory preflight passes again (a GB10 can wedge on an OOM loop).
"""

from __future__ import annotations

import signal
from typing import Literal

from pydantic import BaseModel

ExitClass = Literal["clean", "stopped", "kernel-oom", "oomd", "nvrm-oom", "plan-oom", "memguard", "config-error",
                    "canary", "sampling-kernel", "crash"]
RESTARTABLE = {"crash"}
MEMORY_CLASSES = {"kernel-oom", "oomd", "nvrm-oom", "plan-oom", "memguard"}
# MAX's log-line kinds (engines/max/logphases.py) that mean "this configuration cannot run": a
# restart would fail the same way, so it never restarts.
CONFIG_KINDS = ("encoding", "model-path", "port", "architecture", "max-length", "usage")


class ExitEvidence(BaseModel):
    returncode: int | None
    oom_kills_delta: int = 0          # /proc/vmstat oom_kill since start
    kernel_lines: list[str] = []      # kernel-log lines since start (OOM, NVRM, oomd)
    log_error_kinds: list[str] = []   # from the log parser (logphases._ERROR_HINTS kinds)
    last_error: str | None = None     # the server's last error line, to quote
    stopping: bool = False            # we asked it to stop


class ExitVerdict(BaseModel):
    kind: ExitClass
    summary: str
    restart: bool


def describe_status(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def classify_exit(ev: ExitEvidence) -> ExitVerdict:
    status = describe_status(ev.returncode)
    joined = "\n".join(ev.kernel_lines)
    if ev.stopping:
        return ExitVerdict(kind="stopped", summary=f"stopped on request ({status})", restart=False)
    if "NV_ERR_NO_MEMORY" in joined:
        return ExitVerdict(kind="nvrm-oom", restart=False,
                           summary=f"NVRM NV_ERR_NO_MEMORY before exit ({status}); reboot before a large load")
    if "systemd-oomd" in joined or "due to memory pressure" in joined:
        return ExitVerdict(kind="oomd", restart=False, summary=f"killed by systemd-oomd ({status})")
    if ev.returncode == -signal.SIGKILL and (ev.oom_kills_delta > 0 or "Killed process" in joined):
        return ExitVerdict(kind="kernel-oom", restart=False, summary=f"killed by the kernel OOM killer ({status})")
    if "plan-oom" in ev.log_error_kinds or "oom" in ev.log_error_kinds:
        return ExitVerdict(kind="plan-oom", restart=False,
                           summary=f"out of memory while loading ({status}); lower --cap use or free memory")
    if "topk-kernel" in ev.log_error_kinds:
        return ExitVerdict(kind="sampling-kernel", restart=False,
                           summary=f"the sampling kernel failed (modular#6488, CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES; {status})")
    config_kinds = set(CONFIG_KINDS) & set(ev.log_error_kinds)
    if config_kinds:
        quoted = f": {ev.last_error[:200]}" if ev.last_error else ""
        return ExitVerdict(kind="config-error", restart=False,
                           summary=f"configuration error ({', '.join(sorted(config_kinds))}; {status}){quoted}")
    if ev.returncode == 0:
        return ExitVerdict(kind="clean", summary="exited cleanly (exit 0)", restart=False)
    return ExitVerdict(kind="crash", summary=f"crashed ({status})", restart=True)
