"""Memory-cap shim overhead against the fake GB10 driver (tests/shim/fakes), in one run:
ns per cuMemAlloc_v2 + cuMemFree_v2 pair with and without the shim (target: <= 50 ns added, one
thread), the same with 2 threads and with 2 processes sharing one budget, and the cost of
cuMemGetInfo_v2 (target < 1 us added). Functions are found as MAX finds them: dlopen + dlsym.

    .venv/bin/python -m bench shim
    BENCH_SHIM_DRIVER=real python -m bench shim   # on a machine with an NVIDIA GPU: the real driver

Against the real driver the baseline is the driver's own allocation (microseconds, not the fake's
~100 ns), so fewer pairs are timed, and the floor row forces the unified rule (BALDR_MEMCAP_UNIFIED=on)
since a discrete GPU would not read meminfo otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "shim" / "fakes"

BENCH_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef unsigned long long u64;
static int (*Alloc)(u64 *, size_t);
static int (*Free)(u64);
static int (*Info)(size_t *, size_t *);
static long iters;
static pthread_barrier_t bar;
static void *ctx;
static int (*setctx)(void *);
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void *pairs(void *arg) {
    (void)arg; u64 p;
    setctx(ctx);   /* a context is current per thread (the fake does not care; the real driver does) */
    pthread_barrier_wait(&bar);
    for (long i = 0; i < iters; i++) { if (Alloc(&p, 1 << 20) || Free(p)) { fprintf(stderr, "alloc failed\n"); exit(1); } }
    return NULL;
}
int main(int argc, char **argv) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    int (*init)(unsigned) = dlsym(h, "cuInit");
    int (*retain)(void **, int) = dlsym(h, "cuDevicePrimaryCtxRetain");
    setctx = dlsym(h, "cuCtxSetCurrent");
    Alloc = dlsym(h, "cuMemAlloc_v2"); Free = dlsym(h, "cuMemFree_v2"); Info = dlsym(h, "cuMemGetInfo_v2");
    init(0); retain(&ctx, 0); setctx(ctx);
    const char *what = argv[1]; int threads = atoi(argv[2]); iters = atol(argv[3]);
    u64 warm; Alloc(&warm, 1); Free(warm);   /* join the ledger outside the timing */
    double t0, t1;
    if (!strcmp(what, "info")) {
        size_t f, t; t0 = now();
        for (long i = 0; i < iters; i++) Info(&f, &t);
        t1 = now();
    } else {
        pthread_t th[16]; pthread_barrier_init(&bar, NULL, threads + 1);
        for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, pairs, NULL);
        pthread_barrier_wait(&bar); t0 = now();
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        t1 = now();
    }
    printf("%.2f\n", (t1 - t0) * 1e9 / iters);   /* ns per operation, per thread */
    return 0;
}
"""


def _cc(args: list[str]) -> None:
    subprocess.run([shutil.which("cc") or "cc", *args], check=True, capture_output=True)


def _build(d: Path, real: bool) -> None:
    """The bench program, and the fake driver with its /proc/meminfo unless the real driver is timed."""
    (d / "bench.c").write_text(BENCH_C)
    _cc(["-O2", "-o", str(d / "bench"), str(d / "bench.c"), "-pthread", "-ldl"])
    if real:
        return
    lib = ["-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-Wl,-Bsymbolic"]
    _cc([*lib, "-Wl,-soname,libcuda.so.1", "-o", str(d / "libcuda.so.1"), str(FAKES / "fakecuda.c")])
    _cc([*lib, "-Wl,-soname,libnvidia-ml.so.1", "-o", str(d / "libnvidia-ml.so.1"), str(FAKES / "fakenvml.c")])
    (d / "meminfo").write_text("MemTotal: 131072000 kB\nMemFree: 31457280 kB\nMemAvailable: 104857600 kB\n"
                               "HugePages_Total: 0\nHugePages_Free: 0\nHugepagesize: 2048 kB\n")


def _env(d: Path, shim: Path | None, budget: str, real: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BALDR_MEMCAP_", "FAKE_"))}
    env.pop("LD_PRELOAD", None)
    env.update(BALDR_MEMCAP_BUDGET=budget, BALDR_MEMCAP_LIMIT="100G")
    if not real:
        env.update(LD_LIBRARY_PATH=str(d), FAKE_CUDA_MEMINFO=str(d / "meminfo"), FAKE_CUDA_STATIC_FREE="1",
                   BALDR_MEMCAP_MEMINFO=str(d / "meminfo"))
    if shim:
        env["LD_PRELOAD"] = str(shim)
    env.update(extra)
    return env


def _once(d: Path, env: dict, what: str, threads: int, iters: int, procs: int) -> float:
    """ns per op per thread; with procs > 1, the mean of the processes' figures."""
    ps = [subprocess.Popen([str(d / "bench"), what, str(threads), str(iters)], env=env, stdout=subprocess.PIPE,
                           text=True) for _ in range(procs)]
    figures = [float(p.communicate()[0]) for p in ps]
    return sum(figures) / len(figures)


def _compare(d: Path, base: dict, shimmed: dict, what: str, threads: int, iters: int, procs: int = 1,
             repeat: int = 5) -> tuple[float, float]:
    """Best of `repeat` for each environment, alternating runs (and which goes first) so that drift
    hits both alike."""
    best = [float("inf"), float("inf")]
    for r in range(repeat):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            best[i] = min(best[i], _once(d, (base, shimmed)[i], what, threads, iters, procs))
    return best[0], best[1]


def main() -> int:
    from baldr_ops import shim

    lib = shim.library_path()
    real = os.environ.get("BENCH_SHIM_DRIVER") == "real"
    budgets = []
    with tempfile.TemporaryDirectory(prefix="bench-shim-") as tmp:
        d = Path(tmp)
        _build(d, real)

        def env(with_shim: bool, **extra):
            budgets.append(f"bench-{uuid.uuid4().hex[:8]}")
            return _env(d, lib if with_shim else None, budgets[-1], real, **extra)

        n = 20_000 if real else 2_000_000
        rows = []
        # The processes of one row share one budget, hence one ledger counter.
        for label, threads, procs in (("1 thread", 1, 1), ("2 threads", 2, 1), ("2 processes", 1, 2)):
            rows.append((f"alloc+free pair, {label}", *_compare(d, env(False), env(True), "pairs", threads, n, procs)))
        unified = {"BALDR_MEMCAP_UNIFIED": "on"} if real else {}
        rows.append(("alloc+free pair, 1 thread, cap + floor (unified)",
                     *_compare(d, env(False), env(True, BALDR_MEMCAP_FLOOR="8G", **unified), "pairs", 1, n)))
        rows.append(("cuMemGetInfo_v2", *_compare(d, env(False), env(True), "info", 1, n)))

    for name in budgets:
        for path in Path("/dev/shm").glob(f"baldr-memcap.*.{os.geteuid()}.{name}"):
            path.unlink(missing_ok=True)
    print(f"driver: {'the real one (libcuda.so.1 of this machine)' if real else 'the fake GB10 driver'}, "
          f"{n} operations per run, best of 5 alternating runs")
    print(f"{'operation':52} {'driver':>10} {'with shim':>10} {'added':>9} {'ratio':>6}")
    for name, base, with_shim in rows:
        print(f"{name:52} {base:8.1f}ns {with_shim:8.1f}ns {with_shim - base:7.1f}ns {with_shim / base:6.2f}")
    single_added = rows[0][2] - rows[0][1]
    info_added = rows[-1][2] - rows[-1][1]
    if real:  # a pair costs tens of microseconds here and varies by more than the 50 ns target between runs
        print(f"real driver: the shim adds {rows[0][2] / rows[0][1] - 1:+.1%} to a pair (one thread) and "
              f"{rows[-1][2] / rows[-1][1] - 1:+.1%} to cuMemGetInfo_v2; the ns targets are judged on the fake driver")
        return 0
    print(f"targets: <= 50 ns added per pair (single thread): {single_added:.1f} ns "
          f"{'OK' if single_added <= 50 else 'MISSED'}; cuMemGetInfo < 1000 ns added: {info_added:.0f} ns "
          f"{'OK' if info_added < 1000 else 'MISSED'}")
    return 0
