"""How fast this machine is while the bench runs, in the work the audio rows spend most on: libopus.

The same code's capacity moved twofold between runs on different days (docs/performance.md: row 2c from 60 to
174 µs a message, libopus from 15 to 29 µs a packet), so a capacity figure means little without the machine's
speed beside it. libopus decoding the load generator's packets is the part of row 1 no design of callrec can
make cheaper (each participant's packets must be decoded to be mixed), so the header prints what it costs per
packet and what row 1's goal needs of it: when that alone approaches the machine's cores, 800 participants
cannot pass on it today whatever the server does.
"""

from __future__ import annotations

import time

import bench  # noqa: F401  (sys.path)
from callrec.core.model import AudioEncoding, AudioFormat
from callrec.media.opus import OpusDecoder
from callrec_client.simulator import participant_audio

PACKETS_PER_PARTICIPANT_S = 50  # one 20 ms packet per participant per tick
GOAL_PARTICIPANTS = 800  # issue 11, row 1
MIX_RATE = 16_000  # row 1's mixed mp3 is mixed at 16 kHz, and the decode worker decodes straight to it


def libopus_us_per_packet(repeats: int = 7, seconds: float = 2.0) -> float:
    """µs to decode one of the load generator's packets (participant 1's 48 kHz Opus tone) to 16 kHz, alone in a
    loop: the fastest of `repeats` passes over `seconds` of packets (the machine's speed, not its noise)."""
    fmt = AudioFormat(AudioEncoding.OPUS, 48_000, 1)
    packets = participant_audio(0, fmt, seconds, speech=False)
    decoder = OpusDecoder(MIX_RATE)
    out = bytearray()
    best = float("inf")
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            for packet in packets:
                decoder.decode_into(packet, out)
            best = min(best, (time.perf_counter() - started) / len(packets))
            expected = len(packets) * MIX_RATE // PACKETS_PER_PARTICIPANT_S * 4  # float32 samples
            if len(out) != expected:
                raise RuntimeError(f"libopus decoded {len(out)} bytes of {len(packets)} packets, not {expected}")
            out.clear()
    finally:
        decoder.close()
    return best * 1e6


def describe(us_per_packet: float, cores: int) -> str:
    """The header's line: the per-packet cost and what row 1's goal needs of it, as a share of the cores."""
    need = GOAL_PARTICIPANTS * PACKETS_PER_PARTICIPANT_S * us_per_packet / 1e6
    return (f"machine speed: libopus decodes a load packet (48 kHz Opus -> {MIX_RATE // 1000} kHz) in "
            f"{us_per_packet:.1f} µs alone; row 1's {GOAL_PARTICIPANTS} participants need {need:.2f} of a core "
            f"for that alone, of {cores}")
