"""Recorded trajectories (tests/memguard/make_trajectories.py, from GB10 field reports) replayed
through the sampler's readers and the guard's policy with the fixture's clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from baldr_ops.memguard.policy import GIB, GuardConfig, MemGuard
from baldr_ops.memguard.sample import replay

HERE = Path(__file__).with_name("trajectories")
# The defaults on a GB10 (MemTotal 121.69 GiB): 8 GiB load floor, 4 GiB serve floor.
GB10 = GuardConfig.for_machine(int(121.69 * GIB))


def run(name: str, config: GuardConfig = GB10, grace_s: float = 30.0):
    """Replay as an owner would: on a drain decision the phase becomes draining with a deadline."""
    guard = MemGuard(config)
    out = []
    phase_override = None
    for sample, phase in replay(HERE / name):
        decision = guard.observe(sample, phase_override or phase)
        out.append((sample, decision))
        if "drain" in decision.actions:
            phase_override = "draining"
            guard.drain_deadline = sample.t + grace_s
    return out


def test_gb10_defaults():
    assert (GB10.load_floor, GB10.serve_floor) == (8 * GIB, 4 * GIB)


def test_load_flood_fadvises_at_the_first_sample_under_the_floor():
    steps = run("load_flood")
    last = steps[-1][0]
    assert last.mem_free <= 1.1 * GIB and last.reclaimable_cache >= 59 * GIB   # the scenario: ~1 GiB under 60 GiB
    first_under = next(i for i, (s, _) in enumerate(steps) if s.mem_free < 8 * GIB)
    assert all(not d.actions for _, d in steps[:first_under])
    sample, decision = steps[first_under]
    assert decision.actions[0] == "fadvise" and sample.reclaimable_cache > 40 * GIB
    # Compaction at once: blocks of 2 MiB and more have run out (under 1 GiB of them).
    assert "compact" in decision.actions and sample.free_2m_bytes < 1 * GIB
    # Still low: caches dropped once fadvise had its second, never in the same breath; rate-limited.
    later = [a for _, d in steps[first_under + 1:] for a in d.actions]
    first_drop = next(s.t for s, d in steps if "drop_caches" in d.actions)
    assert first_drop - sample.t >= GB10.fadvise_settle_s
    assert later.count("fadvise") <= 1 + (steps[-1][0].t - sample.t) / GB10.fadvise_every_s
    assert later.count("drop_caches") <= 1 + (steps[-1][0].t - sample.t) / GB10.drop_caches_every_s
    assert not any(a in ("drain", "kill") for _, d in steps for a in d.actions)  # a load is never killed


def test_false_positive_memfree_dip_never_acts():
    steps = run("false_positive")
    assert min(s.mem_free for s, _ in steps) == 1222 << 20     # the dip the watchdog killed on
    assert min(s.mem_available for s, _ in steps) == 6969 << 20
    assert [d.actions for _, d in steps] == [()] * len(steps)
    assert all(d.level == "ok" for _, d in steps)


def test_real_exhaustion_reclaims_then_drains_then_kills():
    steps = run("real_exhaustion", grace_s=30.0)
    actions = [(s.t, a) for s, d in steps for a in d.actions if a != "warn"]
    names = [a for _, a in actions]
    assert names.index("fadvise") < names.index("drain") < names.index("kill")
    # Nothing before MemAvailable had been under 4 GiB for three samples with evidence.
    first_act = actions[0][0]
    under = [s.t for s, _ in steps if s.mem_available < 4 * GIB]
    assert first_act >= under[2]
    # The drain waits for the reclaim to show (settle time), the kill comes when memory would run
    # out before a 30 s drain could end.
    t_reclaim, t_drain, t_kill = (next(t for t, a in actions if a == x) for x in ("fadvise", "drain", "kill"))
    assert t_drain - t_reclaim >= GB10.settle_s
    kill = next(d for _, d in steps if "kill" in d.actions)
    assert kill.time_to_exhaustion_s < 30 - (t_kill - t_drain)


def test_nvrm_line_acts_at_the_next_sample():
    steps = run("nvrm_line")
    line_at = next(i for i, (s, _) in enumerate(steps) if s.kernel_lines)
    assert "NV_ERR_NO_MEMORY" in steps[line_at][0].kernel_lines[0]
    assert all(not d.actions for _, d in steps[:line_at])
    sample, decision = steps[line_at]
    assert decision.acts and "NV_ERR_NO_MEMORY" in decision.reason
    # 22 GiB is available: the driver's failure calls for reclaim (and compaction: no 2 MiB blocks
    # are free), not for stopping the server.
    assert set(decision.actions) <= {"fadvise", "drop_caches", "compact"} and "compact" in decision.actions
    assert not any(a in ("drain", "kill") for _, d in steps for a in d.actions)


@pytest.mark.parametrize("name", ["load_flood", "false_positive", "real_exhaustion", "nvrm_line"])
def test_every_signal_is_read_from_the_fixture(name):
    for sample, _ in replay(HERE / name):
        assert None not in (sample.mem_free, sample.mem_available, sample.reclaimable_cache,
                            sample.psi_full_avg10, sample.free_2m_bytes)
        assert sample.kernel_log_readable
