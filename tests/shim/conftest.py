"""Builds the fake GB10 driver (libcuda.so.1, libnvidia-ml.so.1) and the test driver programs once
per session, and runs scripted driver calls under the shim."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FAKES = Path(__file__).parent / "fakes"
GIB = 1 << 30


def cc() -> str:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        pytest.skip("needs a C compiler")
    return compiler


def compile_c(args: list[str]) -> None:
    proc = subprocess.run([cc(), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def write_meminfo(path: Path, total: int = 125 * GIB, free: int = 30 * GIB, available: int = 100 * GIB,
                  huge_total: int = 0, huge_free: int = 0, huge_size_kb: int = 2048) -> Path:
    path.write_text(
        f"MemTotal:       {total // 1024} kB\nMemFree:        {free // 1024} kB\n"
        f"MemAvailable:   {available // 1024} kB\nBuffers:          1024 kB\n"
        f"HugePages_Total:   {huge_total}\nHugePages_Free:    {huge_free}\nHugepagesize:   {huge_size_kb} kB\n")
    return path


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    lines: list[dict] = field(default_factory=list)

    def steps(self, name: str) -> list[dict]:
        return [d for d in self.lines if d["step"] == name]

    def step(self, name: str, index: int = 0) -> dict:
        found = self.steps(name)
        assert len(found) > index, f"no {name!r} #{index} in output:\n{self.stdout}\n{self.stderr}"
        return found[index]


def parse_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        d: dict = {"step": words[0], "args": []}
        for w in words[1:]:
            if "=" in w:
                k, v = w.split("=", 1)
                d[k] = int(v) if v.lstrip("-").isdigit() else v
            else:
                d["args"].append(w)
        out.append(d)
    return out


@dataclass
class Kit:
    dir: Path
    shim: Path
    budgets: list[str] = field(default_factory=list)

    def budget(self) -> str:
        name = f"t{uuid.uuid4().hex[:12]}"
        self.budgets.append(name)
        return name

    def env(self, budget: str | None = None, preload: Path | str | None = "shim", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BALDR_MEMCAP_", "FAKE_"))}
        env.pop("LD_PRELOAD", None)
        env["LD_LIBRARY_PATH"] = str(self.dir)
        env["BALDR_MEMCAP_BUDGET"] = budget or self.budget()
        meminfo = self.dir / "meminfo.default"
        env["FAKE_CUDA_MEMINFO"] = env["BALDR_MEMCAP_MEMINFO"] = str(meminfo)
        if preload == "shim":
            env["LD_PRELOAD"] = str(self.shim)
        elif preload:
            env["LD_PRELOAD"] = str(preload)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def cmd(self, route: str, *steps: str) -> list[str]:
        exe = self.dir / ("drv_link" if route == "link" else "drv")
        return [str(exe), route, *steps]

    def run(self, route: str, *steps: str, env: dict | None = None, timeout: float = 60, **extra) -> Result:
        proc = subprocess.run(self.cmd(route, *steps), env=env or self.env(**extra), capture_output=True,
                              text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr, parse_lines(proc.stdout))

    def popen(self, route: str, *steps: str, env: dict) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(route, *steps), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> Kit:
    from baldr_ops import shim

    d = tmp_path_factory.mktemp("fakegpu")
    common = ["-O2", "-g", "-Wall", "-Wextra", "-Werror"]
    lib = ["-fPIC", "-shared", "-fvisibility=hidden", "-Wl,-Bsymbolic"]
    compile_c([*common, *lib, "-Wl,-soname,libcuda.so.1", "-o", str(d / "libcuda.so.1"), str(FAKES / "fakecuda.c")])
    compile_c([*common, *lib, "-Wl,-soname,libnvidia-ml.so.1", "-o", str(d / "libnvidia-ml.so.1"),
               str(FAKES / "fakenvml.c")])
    (d / "libcuda.so").symlink_to("libcuda.so.1")
    (d / "libnvidia-ml.so").symlink_to("libnvidia-ml.so.1")
    compile_c([*common, "-o", str(d / "drv"), str(FAKES / "drv.c"), "-pthread", "-ldl"])
    compile_c([*common, "-DLINK", "-o", str(d / "drv_link"), str(FAKES / "drv.c"), f"-L{d}", "-lcuda",
               "-lnvidia-ml", f"-Wl,-rpath,{d}", "-pthread", "-ldl"])
    write_meminfo(d / "meminfo.default")
    k = Kit(dir=d, shim=shim.library_path())
    yield k
    for name in k.budgets:  # the ledgers of this session's budgets
        for path in Path("/dev/shm").glob(f"baldr-memcap.*.{os.geteuid()}.{name}"):
            path.unlink(missing_ok=True)
