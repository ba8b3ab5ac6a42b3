"""The guard's judgement on hand-made samples: unreadable signals, dry-run, rate limits."""

from __future__ import annotations

from baldr_ops.memguard.policy import GIB, GuardConfig, MemGuard, Sample, default_load_floor, default_serve_floor

CONFIG = GuardConfig(load_floor=8 * GIB, serve_floor=4 * GIB)


def test_floors_scale_below_64_gib():
    assert default_load_floor(128 * GIB) == 8 * GIB and default_serve_floor(128 * GIB) == 4 * GIB
    assert default_load_floor(24 * GIB) == 3 * GIB and default_serve_floor(24 * GIB) == int(1.5 * GIB)


def test_an_unreadable_signal_is_unknown_and_never_acted_on():
    guard = MemGuard(CONFIG)
    # Loading with MemFree unreadable: nothing to judge by.
    d = guard.observe(Sample(t=0, mem_available=1 * GIB, reclaimable_cache=50 * GIB), "loading")
    assert d.actions == () and d.level == "unknown" and "mem_free" in d.unknown
    # Serving with MemAvailable unreadable, PSI high and an NVRM line: still no drain.
    for t in range(6):
        d = guard.observe(Sample(t=t, mem_free=1 * GIB, psi_full_avg10=80.0, kernel_log_readable=True), "serving")
        assert "drain" not in d.actions and d.level == "unknown"
    # Under the floor with PSI and the kernel log unreadable and MemAvailable steady: no evidence.
    guard = MemGuard(CONFIG)
    for t in range(10):
        d = guard.observe(Sample(t=t, mem_available=3 * GIB, mem_free=1 * GIB), "serving")
        assert d.actions == () and {"psi_full_avg10", "kernel_log"} <= set(d.unknown)


def test_rate_limits_hold_while_memfree_stays_low():
    guard = MemGuard(CONFIG)
    taken = []
    for i in range(80):   # 20 s at 4 Hz, MemFree stuck at 1 GiB under 40 GiB of cache
        d = guard.observe(Sample(t=i * 0.25, mem_free=1 * GIB, mem_available=41 * GIB, reclaimable_cache=40 * GIB,
                                 free_2m_bytes=0), "loading")
        taken += [(i * 0.25, a) for a in d.actions]
    for action, every in (("fadvise", 2.0), ("drop_caches", 10.0), ("compact", 30.0)):
        times = [t for t, a in taken if a == action]
        assert times and all(b - a >= every for a, b in zip(times, times[1:], strict=False)), (action, times)


def test_without_weight_files_or_root_it_does_what_it_can():
    guard = MemGuard(GuardConfig(load_floor=8 * GIB, has_weight_files=False, drop_caches_permitted=False))
    d = guard.observe(Sample(t=0, mem_free=1 * GIB, reclaimable_cache=40 * GIB, free_2m_bytes=0), "loading")
    assert d.actions == () and d.level == "warn"          # nothing it may do: it says so
    guard = MemGuard(GuardConfig(load_floor=8 * GIB, has_weight_files=False))
    d = guard.observe(Sample(t=0, mem_free=1 * GIB, reclaimable_cache=40 * GIB, free_2m_bytes=0), "loading")
    assert d.actions == ("drop_caches", "compact")
