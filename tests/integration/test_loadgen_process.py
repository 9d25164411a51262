"""`bench.server_load.LoadGen`: the load generator's process, as every server-load row starts it.

Its stderr goes to a file, not a pipe nobody reads during a step (a full pipe would stall the
generator mid-step and look like a slow server); when it dies, the error says why, from that file.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from bench.server_load import LoadGen, run_step
from tests.harness import free_port


async def test_a_generator_that_dies_reports_its_traceback() -> None:
    with pytest.raises(RuntimeError, match=r"exited before 'ready'(.|\n)*KeyError: 'target'"):
        await LoadGen.start({"calls": ["c"], "participants": 1, "seconds": 1}, timeout=60)


async def test_a_step_whose_calls_cannot_be_opened_fails_with_the_reason() -> None:
    """A server (or proxy) that does not take the calls fails the step and says which call, instead of ending the
    whole benchmark row with a traceback (it did, through HAProxy's 100 streams a connection)."""
    nobody = SimpleNamespace(target=f"127.0.0.1:{free_port()}", proc=SimpleNamespace(pid=os.getpid()))
    result = await run_step(nobody, 2, 1.0, participants=1, codec="pcmu")  # type: ignore[arg-type]
    assert not result.passed
    assert result.reasons[0].startswith("errors: load generator: call 1 of 2 (bench-"), result.reasons
    assert "was not opened" in result.reasons[0]


def test_h264_clips_loop_cleanly_and_decode_to_the_pattern() -> None:
    """Row 3's participants send H.264 (issue 11): each 2 s loop starts with a key frame and every frame
    decodes, again after the loop restarts, to the participant's own picture."""
    import av
    import numpy as np

    from bench.loadgen import video_clips

    video = {"width": 320, "height": 180, "fps": 15.0}
    raw = video_clips(2, video)
    encoded = video_clips(2, {**video, "codec": "h264"})
    for clip, pictures in zip(encoded, raw, strict=True):
        assert len(clip) == 30 and [key for _, key in clip] == [True] + [False] * 29
        decoder = av.CodecContext.create("h264", "r")
        shown = []
        for data, _ in clip + clip[:3]:  # into the next loop: a fresh key frame, no broken references
            shown += [f.to_ndarray(format="yuv420p")[:180] for f in decoder.decode(av.Packet(data))]
        for frame in decoder.decode(None):
            shown.append(frame.to_ndarray(format="yuv420p")[:180])
        assert len(shown) == 33
        for k, luma in enumerate(shown):
            expected = np.frombuffer(pictures[k % 30][0], np.uint8)[: 320 * 180].reshape(180, 320)
            assert np.abs(luma.astype(int) - expected).mean() < 6, k  # lossy, but this participant's picture
    assert [f for f, _ in raw[0]] != [f for f, _ in raw[1]]  # each participant has a picture of its own


async def test_the_generator_reports_its_write_backlog_against_a_sink() -> None:
    """The `streamed` report carries `backlog_max_ms` (media queued that gRPC had not taken): against the null
    sink, at a load far below the generator's capacity, every frame is acked and the backlog stays small."""
    from bench.loadgen_capacity import measure

    m = await measure(2, 1.0, "opus", lambda _line: None)
    assert m.sent == m.received == 2 * 10 * 50
    assert 0.0 <= m.backlog_max_ms < 500.0
