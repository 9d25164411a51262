"""A call that nothing records is not decoded or mixed (issue 11): its media is played out unheard.

Gateways may stream every call, recorded or not; decoding and mixing those would cost as much as
recording them. The tick loop consumes such a call's frames undecoded, and once a recording (a
sink) attaches, what follows is decoded, mixed and heard as usual, without a phantom gap.
"""

from __future__ import annotations

import asyncio

import numpy as np

from callrec.core.call_media import CallMedia
from callrec.core.clock import MediaClock
from callrec.core.model import AudioEncoding, AudioFormat
from callrec.core.ports import FrameDecoder
from callrec.media.decode import PyAVAudioCodecs
from callrec.testing import EPOCH, CollectingSink, dominant_frequencies, encode_frames, tone

OPUS = AudioFormat(AudioEncoding.OPUS, 48_000, 1)


class CountingCodecs(PyAVAudioCodecs):
    """PyAV's codecs, counting the frames their decoders decode."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def decoder(self, audio_format: AudioFormat) -> FrameDecoder:
        inner = super().decoder(audio_format)
        codecs = self

        class Counting:
            sample_rate = inner.sample_rate

            def frame_samples(self, data: bytes) -> int:
                return inner.frame_samples(data)

            def decode(self, data: bytes) -> np.ndarray:
                codecs.decoded += 1
                return inner.decode(data)

            def decode_into(self, data: bytes, out: np.ndarray) -> int:
                codecs.decoded += 1
                return inner.decode_into(data, out)

        return Counting()  # type: ignore[return-value]


async def test_frames_of_an_unrecorded_call_are_not_decoded_until_a_recording_listens() -> None:
    codecs = CountingCodecs()
    call = CallMedia("c", MediaClock(start_time=EPOCH), codecs)
    call.add_participant("a", "A", OPUS, "gw")
    task = asyncio.create_task(call.run())
    frames = encode_frames(tone(440.0, 2.0, rate=48_000), OPUS)
    for i in range(50):  # a second that nothing records
        assert call.push_audio("a", i, i * 20_000, frames[i]) is None
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert codecs.decoded == 0, "nothing records the call: nothing is decoded"
    assert call.stats("a").frames_received == 50, "the frames still count as received"
    sink = CollectingSink()
    call.attach(sink)
    for i in range(50, 100):  # the second second, recorded
        call.push_audio("a", i, i * 20_000, frames[i])
        await asyncio.sleep(0)
    await call.close()
    await task
    assert codecs.decoded >= 45, "a listener makes the call decode again"
    heard = sink.participant("a")
    assert abs(len(heard) - 16_000) <= 3 * 320, len(heard)  # about the recorded second, not two
    assert abs(dominant_frequencies(heard[1600:], 16_000, count=1)[0] - 440) < 10
    assert call.stats("a").gap_fill_ms == 0, "frames dropped unheard are not a gap"
