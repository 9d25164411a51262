"""Opus decoding in a process of its own: `python -m callrec.media.decode_worker <command fd> <result fd>`.

Why a process: Opus decoding is a quarter of the event loop's time under load (about 15 µs of
libopus per 20 ms packet; 200 participants are 10 000 packets a second), and threads do not help:
every return from libopus needs the GIL back, and a thread that waits for it behind a busy loop
stalls (measured: with a decode thread the loop kept up with fewer calls than without). A process
decodes on the other core; the loop only hands it each call's due packets once per tick.

The parent side and the wire format are in `callrec.media.decode_pool`. Each decoder's state lives
here, keyed by the number the pool gave it; one decoder's packets always come in order (a call's
tick waits for its answer before the next). A packet libopus refuses is answered with its error
(the decoder is reset and goes on); the process never exits over a packet.
"""

from __future__ import annotations

import sys
from typing import Any

from callrec.media.opus import OpusDecoder, OpusError
from callrec.media.pipe_channel import serve_commands


def serve(commands: int, results: int) -> None:
    """Answer requests until the parent closes the command pipe (`pipe_channel.serve_commands`: the calls
    that ticked in one turn of the loop come in one write and are answered in one)."""
    decoders: dict[int, OpusDecoder] = {}
    serve_commands(commands, results, lambda message: _answer(message, decoders))


def _answer(message: tuple[Any, ...], decoders: dict[int, OpusDecoder]) -> tuple[Any, ...] | None:
    """The answer to a `decode` request; None for `forget` (it has none)."""
    if message[0] == "forget":
        for key in message[1]:
            decoder = decoders.pop(key, None)
            if decoder is not None:
                decoder.close()
        return None
    _, request_id, rate, items = message
    lengths: list[int] = []
    errors: dict[int, str] = {}
    data = bytearray()
    for index, (key, packet) in enumerate(items):
        decoder = decoders.get(key)
        if decoder is None:
            decoder = decoders[key] = OpusDecoder(rate)
        try:
            lengths.append(decoder.decode_into(packet, data))
        except OpusError as exc:
            errors[index] = str(exc)
            lengths.append(0)
    return (request_id, lengths, errors, data)


def main(argv: list[str]) -> None:
    serve(int(argv[1]), int(argv[2]))


if __name__ == "__main__":
    main(sys.argv)
