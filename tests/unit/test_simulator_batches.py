"""`gateway-sim --batch-ms`: how the simulator groups frames into `media_batch` messages (issue 11).

Each gRPC message costs the server about 0.1 ms of CPU whatever it holds (`make bench` row 2c), so a
gateway with many small calls should send several ticks per message. Grouping must keep every frame,
in order, never send one before it is due, and leave the default (a message per tick) as it was.
"""

from __future__ import annotations

from callrec_client.simulator import Impairments, SimReport, _send_groups, schedule


def plan(participants: int = 2, ticks: int = 150, **impairments: float) -> list[tuple]:
    frames = {f"p{i}": [bytes([i, k % 256]) for k in range(ticks)] for i in range(participants)}
    return schedule(frames, 0, Impairments(**impairments), SimReport())  # type: ignore[arg-type]


def test_a_60_ms_window_sends_three_ticks_a_message_when_the_newest_is_due() -> None:
    events = plan()
    groups = _send_groups(events, 256, 0.06)
    assert len(groups) == 50 and all(len(g) == 6 for g in groups)
    assert [e for g in groups for e in g] == events  # every frame once, in order
    for n, group in enumerate(groups):
        assert {e[2] for e in group} == {3 * n + 1, 3 * n + 2, 3 * n + 3}  # sequences of ticks 3n..3n+2
        assert group[-1][0] == max(e[0] for e in group)  # sent when its newest frame is due, none early


def test_without_a_window_a_message_holds_one_tick_and_the_limit_splits_big_ones() -> None:
    events = plan(participants=3)
    assert [len(g) for g in _send_groups(events, 256)] == [3] * 150
    assert [len(g) for g in _send_groups(events, 2)] == [2, 1] * 150
    assert [len(g) for g in _send_groups(events, 4, 0.06)] == [4, 4, 1] * 50


def test_windows_hold_jittered_frames_in_send_order() -> None:
    events = plan(jitter_ms=15, reorder=0.05, duplicate=0.02)
    groups = _send_groups(events, 256, 0.1)
    assert [e for g in groups for e in g] == events
    for group in groups:
        assert len({int(e[0] / 0.1 + 1e-9) for e in group}) == 1  # one window each
        assert group[-1][0] == max(e[0] for e in group)
