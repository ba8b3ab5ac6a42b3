"""The shim built with ASan+UBSan and with TSan runs the allocation, thread, fork and query paths
clean. Skipped only where the compiler has no runtime for the sanitizer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import cc, compile_c

CSRC = Path(__file__).resolve().parents[2] / "csrc"
FLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-pthread", "-shared"]
SANITIZERS = {
    "asan": (["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"],
             "libasan.so", {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}),
    "tsan": (["-fsanitize=thread"], "libtsan.so", {"TSAN_OPTIONS": "report_signal_unsafe=0"}),
}
MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")


def runtime(name: str) -> str:
    path = subprocess.run([cc(), f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not path or path == name or not Path(path).exists():
        pytest.skip(f"the compiler has no {name} runtime")
    return str(Path(path).resolve())


@pytest.mark.parametrize("san", sorted(SANITIZERS))
def test_sanitized_shim_runs_clean(kit, tmp_path, san):
    flags, rt_name, extra = SANITIZERS[san]
    rt = runtime(rt_name)
    lib = tmp_path / f"libbaldr_memcap_{san}.so"
    compile_c([*FLAGS, *flags, "-o", str(lib), *sorted(str(p) for p in CSRC.glob("*.c")), "-ldl"])
    env = kit.env(preload=f"{rt}:{lib}", BALDR_MEMCAP_LIMIT="1G", BALDR_MEMCAP_FLOOR="1G", **extra)
    steps = ["init", "info"]
    for kind in ("dev", "pitch", "managed", "host", "hostalloc", "register", "async", "pool", "vmm"):
        steps += ["alloc", kind, "64M"]
    steps += ["freebogus", "threads", "4", "dev", "1M", "3000", "threads", "3", "vmm", "2M", "1000",
              "threadfill", "3", "dev", "32M", "info", "forkalloc", "dev", "16M", "trim", "info"]
    r = kit.run("dlsym", *steps, env=env, timeout=300)
    assert r.rc == 0, r.stderr[-3000:]
    assert not [m for m in MARKERS if m in r.stderr], r.stderr[-3000:]
    assert len(r.steps("alloc")) == 9 and all(a["rc"] == 0 for a in r.steps("alloc"))
    assert r.step("threads", 2)["bytes"] > 0 and r.step("info", 1)["free"] == 0
