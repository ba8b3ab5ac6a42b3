"""The black box: two segments cover the last minutes, a torn line is skipped, a run without its
end marker and without a live writer is unclean."""

from __future__ import annotations

import json

from baldr_ops.memguard.blackbox import SEGMENTS, BlackBox, read_box


def test_segments_rotate_and_keep_at_least_the_last_segment_length(tmp_path):
    now = [0.0]
    box = BlackBox(tmp_path, clock=lambda: now[0], segment_s=60.0)
    box.start()
    for _ in range(300):               # 5 minutes at 1 Hz with 1-minute segments
        now[0] += 1.0
        box.record("sample", mem_available=1)
    box.end()
    reading = read_box(tmp_path)
    times = [r["t"] for r in reading.records]
    assert times == sorted(times) and reading.clean and reading.records[-1]["kind"] == "end"
    # Older records were overwritten, the last minute (and more) is whole.
    assert times[0] > 1.0 and times[-1] - times[0] >= 60.0
    assert sum(1 for r in reading.records if r["kind"] == "sample") >= 60
    # The start record of this run is gone with its segment: the box is still this run's.
    assert reading.started is None and not reading.unclean


def test_a_torn_last_line_is_skipped_and_the_run_is_unclean(tmp_path):
    box = BlackBox(tmp_path, clock=lambda: 5.0)
    box.start(port=1)
    box.record("sample", mem_available=3)
    box.close()
    path = tmp_path / SEGMENTS[0]
    path.write_text(path.read_text() + '{"t": 6.0, "kind": "sam')    # power lost mid-write
    start = json.loads(path.read_text().splitlines()[0])
    path.write_text(path.read_text().replace(start["boot_id"], "an-earlier-boot"))
    reading = read_box(tmp_path)
    assert [r["kind"] for r in reading.records] == ["start", "sample"]
    assert reading.unclean and not reading.writer_alive


def test_a_new_run_does_not_inherit_the_previous_runs_records(tmp_path):
    box = BlackBox(tmp_path, clock=lambda: 1.0)
    box.start(run=1)
    box.record("sample", n=1)
    box.close()
    box = BlackBox(tmp_path, clock=lambda: 2.0)
    box.start(run=2)
    box.end()
    reading = read_box(tmp_path)
    assert reading.started["run"] == 2 and [r["kind"] for r in reading.records] == ["start", "end"]
