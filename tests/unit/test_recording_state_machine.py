"""The recording state machine: the transition table and pause bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from callrec.core.errors import FailedPrecondition
from callrec.core.model import RecordingError, RecordingOptions, RecordingState
from callrec.core.recording_state import TRANSITIONS, Recording, new_recording_id

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make(state=RecordingState.ACTIVE) -> Recording:
    return Recording(new_recording_id(), "c", "c", "conn", RecordingOptions(), state, T0)


@pytest.mark.parametrize("src", list(RecordingState))
@pytest.mark.parametrize("dst", list(RecordingState))
def test_transition_table(src, dst):
    rec = make(src)
    if dst in TRANSITIONS[src]:
        rec.transition(dst)
        assert rec.state is dst
    else:
        with pytest.raises(FailedPrecondition, match=f"is {src.value}; it cannot become {dst.value}"):
            rec.transition(dst)


def test_pause_intervals_and_paused_time():
    rec = make()
    assert rec.pause(T0 + timedelta(seconds=10)) and not rec.pause(T0 + timedelta(seconds=11))
    assert rec.paused_time(T0 + timedelta(seconds=15)) == timedelta(seconds=5)
    assert rec.resume(T0 + timedelta(seconds=20)) and not rec.resume(T0 + timedelta(seconds=21))
    assert rec.pause_intervals[0].duration == timedelta(seconds=10)
    rec.pause(T0 + timedelta(seconds=30))
    assert rec.begin_stop(T0 + timedelta(seconds=33), "StoppedByRequest")
    assert not rec.begin_stop(T0 + timedelta(seconds=34), "again")
    assert [p.duration for p in rec.pause_intervals] == [timedelta(seconds=10), timedelta(seconds=3)]
    assert rec.state is RecordingState.STOPPING and rec.session_end_reason == "StoppedByRequest"


def test_fail_records_error():
    rec = make()
    rec.fail(RecordingError(14, "store down"), T0)
    assert rec.state is RecordingState.FAILED and rec.error and rec.error.message == "store down"


def test_recording_ids_are_one_url_safe_segment():
    ids = {new_recording_id() for _ in range(100)}
    assert len(ids) == 100 and all("/" not in i and "+" not in i and "=" not in i for i in ids)
