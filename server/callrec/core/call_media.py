"""`CallMedia`: the audio of one call, mixed once per 20 ms tick for every recording of it.

One `CallMedia` per call. The gRPC layer calls `add_participant` / `push_audio` /
`remove_participant` as messages arrive (cheap: validation plus a jitter-buffer insert);
one task runs `run()`, which waits on the call's clock and, per tick:

1. pops every participant's due frames in sequence order, decodes them (stateful Opus
   needs order) and places them on the call timeline (`core.jitter`);
2. reads each participant's block at its own rate and resamples all participants of
   one rate together (`AudioCodecs.resampler_bank`, one swresample call per group);
3. mixes (`core.mixer`) and hands one `MixTick` to every attached sink
   (`AudioRecording`, `VideoRecording`, ...): all outputs share this one pass.

Nothing here imports PyAV or gRPC: decoding and resampling come in through the
`AudioCodecs` protocol (`callrec.media.decode.PyAVAudioCodecs` in production).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np

from callrec.core.clock import TICK_US, Clock, MediaProgress
from callrec.core.jitter import EncodedFrame, JitterBuffer
from callrec.core.log import get_logger
from callrec.core.mixer import Mixer, MixResult
from callrec.core.model import OUTPUT_SAMPLE_RATE, AudioFormat, DecodeError, MediaStats, RejectReason
from callrec.core.ports import AudioCodecs, BatchDecoder, BlockResampler, FrameDecoder

__all__ = ["TICK_SAMPLES", "CallMedia", "MixTick", "ParticipantBlocks", "ParticipantInput", "TickSink"]

log = get_logger(__name__)

#: Samples of 16 kHz output per tick.
TICK_SAMPLES = OUTPUT_SAMPLE_RATE * TICK_US // 1_000_000
#: A participant's first frame this far from its gateway's latest frame is on a clock of its own.
REANCHOR_TOLERANCE_US = 1_000_000
#: ... and, for a gateway's first participant, this far before the playout point, or after it.
REANCHOR_BEHIND_US = 1_000_000
REANCHOR_AHEAD_US = 30_000_000
#: Late frames are reported in the log at most once per this many ticks (10 s of call).
LATE_LOG_INTERVAL_TICKS = 500
#: A call behind its deadlines decodes at most this many ticks' frames (0.5 s) in one batch request.
MAX_CATCH_UP_TICKS = 25

_Decoded = tuple[EncodedFrame, "np.ndarray | DecodeError"]
"""A frame and what decoding it gave."""


@dataclass(frozen=True)
class MixTick:
    """One 20 ms tick of a call: everything any output needs.

    Arrays are fresh for every tick (sinks may keep references). `participants` holds
    every participant present during the tick, in join order, video-only ones as silence
    (its blocks are made on first use: most sinks only look at who is there);
    `names` is a live read-only view of display names.
    """

    index: int
    start_us: int  # call time of the first sample
    time: datetime  # UTC wall-clock time of the first sample
    mixed: np.ndarray  # int16, TICK_SAMPLES samples
    participants: Mapping[str, np.ndarray]  # participant_id -> int16 block
    speaking: dict[str, bool]
    names: Mapping[str, str]

    @property
    def samples(self) -> int:
        """Samples per block."""
        return len(self.mixed)

    def pcm_of(self, participant_id: str) -> np.ndarray:
        """A participant's block as float32 in [-1, 1): the mixer's own input row (a view: do not change
        it), or, for a tick not made by the mixer, the int16 block scaled.

        For sinks that mix or convert further (an unmixed recording's channels): no int16 round trip,
        and the conversion to int16 can happen in a writer thread, once per batch.
        """
        participants = self.participants
        if isinstance(participants, ParticipantBlocks):
            return participants.pcm(participant_id)
        scaled: np.ndarray = np.multiply(participants[participant_id], np.float32(1.0 / 32768.0), dtype=np.float32)
        return scaled

    @property
    def end_time(self) -> datetime:
        """Wall-clock time just after the last sample."""
        return self.time + timedelta(microseconds=TICK_US)


class ParticipantBlocks(Mapping[str, np.ndarray]):
    """A tick's participant id -> int16 block, converted from the mixer's float input on first access.

    Why lazy: a mixed recording (most of them) only asks who was there, and converting every
    participant's block each tick cost as much as the mix itself on a small call. Keys and
    membership never convert.
    """

    __slots__ = ("_ids", "_result", "_rows")

    def __init__(self, ids: Sequence[str], result: MixResult) -> None:
        self._ids = ids
        self._result = result
        self._rows: dict[str, int] | None = None

    def _index(self) -> dict[str, int]:
        rows = self._rows
        if rows is None:
            rows = self._rows = {pid: row for row, pid in enumerate(self._ids)}
        return rows

    def __getitem__(self, participant_id: str) -> np.ndarray:
        block: np.ndarray = self._result.blocks[self._index()[participant_id]]
        return block

    def pcm(self, participant_id: str) -> np.ndarray:
        """The participant's float32 block, the mixer's input row (a view, no conversion)."""
        row: np.ndarray = self._result.pcm[self._index()[participant_id]]
        return row

    def __contains__(self, participant_id: object) -> bool:
        return participant_id in self._index()

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class TickSink(Protocol):
    """Consumer of ticks; `on_tick` runs on the event loop and must return quickly."""

    def on_tick(self, tick: MixTick) -> None:
        """Take one tick."""
        ...


@dataclass
class ParticipantInput:
    """A participant's media in the call: decoder, jitter buffer and where its clock sits on the timeline."""

    participant_id: str
    display_name: str
    gateway_id: str
    audio_format: AudioFormat | None
    stats: MediaStats
    decoder: FrameDecoder | None = None
    jitter: JitterBuffer | None = None
    present: bool = True
    rate: int = field(default=OUTPUT_SAMPLE_RATE)
    anchor: str = ""  # clock anchor key: the gateway, or the participant if its timestamps disagree
    placed_any: bool = False
    offloaded: bool = False  # its frames are decoded by the batch decoder (asked once, at join)


class CallMedia:
    """Audio of one call: ingest, jitter buffers, decode, resample, mix, fan out."""

    def __init__(
        self,
        call_id: str,
        clock: Clock,
        codecs: AudioCodecs,
        *,
        mixer: Mixer | None = None,
        jitter_capacity: int = 1000,
        gap_tolerance_ms: float = 5.0,
        backlog_frames: int = 250,
        on_rejected: Callable[[str, str], None] | None = None,
        max_buffered_ms: int = 5_000,
        max_ahead_ms: int = 5_000,
    ) -> None:
        self.call_id = call_id
        self._max_buffered_ms = max_buffered_ms
        self._max_ahead_us = max_ahead_ms * 1000
        self.clock = clock
        self._codecs = codecs
        self._batch: BatchDecoder | None = getattr(codecs, "batch_decoder", None)
        self._mixer = mixer or Mixer()
        self._jitter_capacity = jitter_capacity
        self._gap_tolerance_ms = gap_tolerance_ms
        self._backlog_frames = backlog_frames
        self._on_rejected = on_rejected
        self._participants: dict[str, ParticipantInput] = {}
        self._stats: dict[str, MediaStats] = {}
        self._unknown = MediaStats()  # frames for participants this call never had
        self._names: dict[str, str] = {}
        self._names_view = types.MappingProxyType(self._names)
        self._gateway_latest_us: dict[str, int] = {}  # newest call time placed on each gateway's own clock
        self._banks: dict[int, BlockResampler] = {}
        self._sinks: list[TickSink] = []
        self._next_tick = 0
        self._running = False
        self._done = asyncio.Event()
        self._late_unlogged = 0  # late frames since the last warning
        self._late_max_us = 0
        self._late_logged_tick: int | None = None
        clock.start()

    # ------------------------------------------------------------------ participants
    def add_participant(
        self,
        participant_id: str,
        display_name: str,
        audio_format: AudioFormat | None,
        gateway_id: str,
    ) -> None:
        """A participant joins; ValueError if already present or the audio format is unusable."""
        old = self._participants.get(participant_id)
        if old is not None and old.present:
            raise ValueError(f"participant {participant_id!r} already joined")
        decoder = self._codecs.decoder(audio_format) if audio_format is not None else None
        if old is not None:  # rejoined while its last words were still draining: drop them
            self._drop(old)
        stats = self._stats.setdefault(participant_id, MediaStats())
        participant = ParticipantInput(participant_id, display_name, gateway_id, audio_format, stats, anchor=gateway_id)
        if decoder is not None:
            participant.decoder = decoder
            participant.rate = decoder.sample_rate
            participant.offloaded = self._batch is not None and self._batch.handles(decoder)
            participant.jitter = JitterBuffer(
                decoder.sample_rate,
                stats,
                capacity=self._jitter_capacity,
                gap_tolerance_ms=self._gap_tolerance_ms,
                backlog_frames=self._backlog_frames,
                max_buffered_ms=self._max_buffered_ms,
                max_early_ms=self._max_ahead_us // 1000,
            )
        self._participants[participant_id] = participant
        self._names[participant_id] = display_name
        self.clock.notify()

    def remove_participant(self, participant_id: str) -> None:
        """A participant leaves; media already received still plays out. Unknown ids are ignored."""
        participant = self._participants.get(participant_id)
        if participant is None or not participant.present:
            return
        participant.present = False
        if participant.jitter is None or participant.jitter.pending_until() is None:
            self._drop(participant)
        self.clock.notify()

    def _drop(self, participant: ParticipantInput) -> None:
        pid = participant.participant_id
        if self._participants.get(pid) is participant:
            del self._participants[pid]
            self._names.pop(pid, None)
        bank = self._banks.get(participant.rate)
        if bank is not None:
            bank.discard(pid)
        self._mixer.forget(pid)

    @property
    def participant_ids(self) -> list[str]:
        """Participants present now, in join order."""
        return [p.participant_id for p in self._participants.values() if p.present]

    # ------------------------------------------------------------------ ingest
    def push_audio(self, participant_id: str, sequence: int, timestamp_us: int, data: bytes) -> str | None:
        """Accept one audio frame; returns None, or the reason it was rejected (already counted).

        A frame counts once: as received (accepted) or under the reason it was rejected.
        """
        participant = self._participants.get(participant_id)
        if participant is None or not participant.present:
            # Not a new stats entry per unknown id: a broken gateway must not grow memory.
            stats = self._stats.get(participant_id) or self._unknown
            stats.reject(RejectReason.UNKNOWN_PARTICIPANT)
            return RejectReason.UNKNOWN_PARTICIPANT
        reason = self._push_audio(participant, sequence, timestamp_us, data)
        if reason is None:
            participant.stats.frames_received += 1
        return reason

    def _push_audio(self, participant: ParticipantInput, sequence: int, timestamp_us: int, data: bytes) -> str | None:
        stats = participant.stats
        if participant.jitter is None or participant.decoder is None:
            stats.reject(RejectReason.NO_AUDIO_FORMAT)
            return RejectReason.NO_AUDIO_FORMAT
        if not data:
            stats.reject(RejectReason.EMPTY_FRAME)
            return RejectReason.EMPTY_FRAME
        try:
            samples = participant.decoder.frame_samples(data)
        except DecodeError:
            stats.reject(RejectReason.DECODE_ERROR)
            return RejectReason.DECODE_ERROR
        call_us = self._place(participant, timestamp_us)
        if self.too_far_ahead(call_us):
            stats.reject(RejectReason.EARLY)
            return RejectReason.EARLY
        if self.too_far_behind(call_us):
            stats.frames_late += 1
            stats.reject(RejectReason.LATE)
            return RejectReason.LATE
        rate = participant.rate
        position = (call_us * rate + 500_000) // 1_000_000
        reason = participant.jitter.push(sequence, position, samples, data)
        if reason is None:
            self.clock.notify()
        elif reason == RejectReason.LATE:
            played = participant.jitter.played_until or 0
            self._frame_late(call_us, played * 1_000_000 // rate - call_us)
        return reason

    def _frame_late(self, call_us: int, lateness_us: int) -> None:
        """Tell the clock (it waits longer from now on) and say so in the log, at most every 10 s.

        Late frames mean the server could not read its streams in time (a stalled or
        overloaded event loop) or a gateway's clock jumped: their audio is lost, so an
        operator has to hear about it, but not once per frame.
        """
        self.clock.note_late(call_us)
        self._late_unlogged += 1
        self._late_max_us = max(self._late_max_us, lateness_us)
        last = self._late_logged_tick
        if last is None or self._next_tick - last >= LATE_LOG_INTERVAL_TICKS:
            log.warning(
                "frames arrived after their time was mixed and were dropped; the server is overloaded "
                "or a gateway's clock jumped; playout delay raised (up to max_playout_delay_ms)",
                call_id=self.call_id,
                late_frames=self._late_unlogged,
                max_lateness_ms=self._late_max_us // 1000,
                playout_delay_ms=self.clock.current_playout_delay_us // 1000,
            )
            self._late_logged_tick = self._next_tick
            self._late_unlogged = 0
            self._late_max_us = 0

    def too_far_ahead(self, call_us: int) -> bool:
        """Does a frame at `call_us` lie more than `max_ahead_ms` past the next tick?

        Checked from the very first frame: a frame stamped hours ahead would otherwise
        make the call's end play out hours of silence (disk filled, `end` never done).
        """
        return call_us > self._next_tick * TICK_US + self._max_ahead_us

    def too_far_behind(self, call_us: int) -> bool:
        """Does a frame at `call_us` lie more than `max_ahead_ms` before the next tick?

        Such a frame is late whatever the jitter buffer has played (before the first tick it
        has played nothing): a timestamp jump of 2^63 µs must not become a buffer of that size.
        """
        return call_us < self._next_tick * TICK_US - self._max_ahead_us

    def place_video(self, participant_id: str, timestamp_us: int) -> int | None:
        """Call time of a participant's video frame (None for a participant not in the call).

        The same placement as its audio (`_place`): a participant whose capture clock is
        off its gateway's gets its own anchor for both, so picture and voice stay together.
        """
        participant = self._participants.get(participant_id)
        if participant is None or not participant.present:
            return None
        return self._place(participant, timestamp_us)

    def _place(self, participant: ParticipantInput, timestamp_us: int) -> int:
        """Call time of a frame; a participant whose first frame is far off its gateway's clock gets its own.

        SPEC says timestamps are on the gateway's clock, but a gateway that starts every
        participant at 0 would otherwise put a late joiner seconds in the past (all "late").
        The one place where a participant's media (audio and video) meets the call timeline.
        """
        call_us = self.clock.place(participant.anchor, timestamp_us)
        if not participant.placed_any:
            participant.placed_any = True
            latest = self._gateway_latest_us.get(participant.gateway_id)
            if latest is not None:  # its gateway's other participants say where "now" is
                agrees = abs(call_us - latest) <= REANCHOR_TOLERANCE_US
            else:
                playout_us = self._next_tick * TICK_US
                agrees = playout_us - REANCHOR_BEHIND_US <= call_us <= playout_us + REANCHOR_AHEAD_US
            if not agrees:
                log.warning(
                    "participant timestamps disagree with its gateway's clock; anchoring it separately",
                    call_id=self.call_id, participant_id=participant.participant_id,
                )
                participant.anchor = f"{participant.gateway_id}\x00{participant.participant_id}"
                call_us = self.clock.place(participant.anchor, timestamp_us)
        if participant.anchor == participant.gateway_id:
            latest = self._gateway_latest_us.get(participant.gateway_id)
            if latest is None or call_us > latest:
                self._gateway_latest_us[participant.gateway_id] = call_us
        return call_us

    # ------------------------------------------------------------------ sinks and stats
    def attach(self, sink: TickSink) -> None:
        """Deliver every following tick to `sink`."""
        if sink not in self._sinks:
            self._sinks.append(sink)

    def detach(self, sink: TickSink) -> None:
        """Stop delivering ticks to `sink` (no error if it was not attached)."""
        if sink in self._sinks:
            self._sinks.remove(sink)

    def stats(self, participant_id: str) -> MediaStats:
        """Counters of one participant (also after it left); KeyError if never seen."""
        return self._stats[participant_id]

    def participant_stats(self) -> dict[str, MediaStats]:
        """Counters of every participant seen in this call."""
        return dict(self._stats)

    def call_stats(self) -> MediaStats:
        """All participants' counters added up."""
        total = MediaStats()
        for stats in [*self._stats.values(), self._unknown]:
            total.frames_received += stats.frames_received
            total.frames_late += stats.frames_late
            total.gap_fill_ms += stats.gap_fill_ms
            for reason, count in stats.frames_rejected_by_reason.items():
                total.reject(reason, count)
        return total

    @property
    def next_tick(self) -> int:
        """Index of the next tick `run()` will produce."""
        return self._next_tick

    # ------------------------------------------------------------------ clock interface
    def media_progress(self, reorder_window_us: int) -> MediaProgress:
        """Delivery progress of the inputs, for `MediaClock` (see `core.clock`)."""
        live = 0
        slowest: int | None = None
        waiting = False
        backlogged = False
        draining_until: int | None = None
        for p in self._participants.values():
            jitter = p.jitter
            if jitter is None:
                continue
            rate = p.rate
            if jitter.backlogged():
                backlogged = True
            if p.present:
                live += 1
                frontier = jitter.frontier(reorder_window_us * rate // 1_000_000)
                if frontier is None:
                    waiting = True
                else:
                    frontier_us = frontier * 1_000_000 // rate
                    slowest = frontier_us if slowest is None else min(slowest, frontier_us)
            else:
                pending = jitter.pending_until()
                if pending is not None:
                    pending_us = -(-pending * 1_000_000 // rate)
                    draining_until = pending_us if draining_until is None else max(draining_until, pending_us)
        return MediaProgress(live, None if waiting else slowest, backlogged, draining_until)

    def _pending_after(self, index: int) -> bool:
        start_us = index * TICK_US
        for p in self._participants.values():
            if p.jitter is None:
                continue
            pending = p.jitter.pending_until()
            if pending is not None and pending * 1_000_000 > start_us * p.rate:
                return True
        return False

    # ------------------------------------------------------------------ the tick loop
    async def run(self) -> None:
        """Produce ticks until `end()` and the remaining media is played out. Run once."""
        if self._running:
            raise RuntimeError("CallMedia.run() is already running")
        self._running = True
        self.clock.start()
        try:
            while True:
                index = self._next_tick
                await self.clock.wait_tick(index, self)
                if self.clock.ended and not self._pending_after(index):
                    break
                if self._sinks:
                    predecoded = await self._decode_elsewhere(index) if self._batch is not None else None
                    tick = self.produce_tick(index, predecoded)
                    self._next_tick = index + 1
                    self._deliver(tick)
                else:  # nothing records this call now: play its media out without decoding or mixing
                    self.skip_tick(index)
                    self._next_tick = index + 1
                # The media clock may never have to wait: let readers and writers run.
                await asyncio.sleep(0)
        finally:
            self._done.set()

    def end(self) -> None:
        """The call ended: `run()` plays out what is buffered, then returns."""
        self.clock.end()

    async def close(self) -> None:
        """`end()` and wait for `run()` to finish (if it runs)."""
        self.end()
        if self._running:
            await self._done.wait()

    def _deliver(self, tick: MixTick) -> None:
        for sink in tuple(self._sinks):
            try:
                sink.on_tick(tick)
            except Exception:
                log.exception("tick sink failed; detaching it", call_id=self.call_id)
                self.detach(sink)

    def skip_tick(self, index: int) -> None:
        """Consume tick `index` unheard: its frames are dropped undecoded, the playout point moves on.

        A call that no recording listens to costs no decoding, resampling or mixing (a gateway may
        stream every call, recorded or not). Frames still count as received; the decoder meets a gap
        when a recording starts, as it would after packet loss.
        """
        drained: list[ParticipantInput] = []
        for p in list(self._participants.values()):
            jitter = p.jitter
            if jitter is None:
                continue
            rate = p.rate
            last = (index + 1) * rate // 50
            jitter.drop_due(last)
            jitter.advance(last)
            if not p.present and jitter.pending_until() is None:
                drained.append(p)
        for p in drained:
            self._drop(p)

    async def _decode_elsewhere(self, index: int) -> dict[int, tuple[ParticipantInput, list[_Decoded]]]:
        """Pop the due frames of every participant the batch decoder handles and decode them there, in one
        request: this call's tick waits for the answer while the loop serves other calls.

        Frames that fall due while the request is out wait for the next tick (`produce_tick` does not pop
        them for these participants): one decoder's frames are decoded in one place, in order.

        A call that fell behind takes the frames of every tick already due (up to `MAX_CATCH_UP_TICKS`) in
        this one request: their PCM waits on the timeline, and those ticks need no round trip of their own.
        With one round trip per tick, a call behind by more than the answer's latency never caught up
        (measured: at 320 participants, calls fell 5 s behind and their frames were refused as early).
        """
        batch = self._batch
        assert batch is not None
        offloaded: list[tuple[ParticipantInput, JitterBuffer, FrameDecoder]] = [
            (p, p.jitter, p.decoder) for p in self._participants.values()
            if p.offloaded and p.jitter is not None and p.decoder is not None
        ]
        if not any((due := jitter.next_due()) is not None and due < (index + 1) * p.rate // 50
                   for p, jitter, _ in offloaded):
            return {}  # nothing due now: this tick plays what earlier requests decoded (or silence)
        last_tick = min(self.clock.due_through(index), index + MAX_CATCH_UP_TICKS)
        popped: list[tuple[ParticipantInput, EncodedFrame]] = []
        items: list[tuple[FrameDecoder, bytes]] = []
        for p, jitter, decoder in offloaded:
            for frame in jitter.pop_due((last_tick + 1) * p.rate // 50):
                popped.append((p, frame))
                items.append((decoder, frame.data))
        if not popped:
            return {}
        results = await batch.decode(items)
        out: dict[int, tuple[ParticipantInput, list[_Decoded]]] = {}
        for (p, frame), result in zip(popped, results, strict=True):
            out.setdefault(id(p), (p, []))[1].append((frame, result))
        return out

    def _place_decoded(self, p: ParticipantInput, frame: EncodedFrame, pcm: np.ndarray | DecodeError) -> None:
        """Put a decoded frame on the participant's timeline; an undecodable one is counted once, as rejected."""
        assert p.jitter is not None
        if isinstance(pcm, DecodeError):  # accepted when it came, found undecodable now
            p.stats.frames_received -= 1
            p.stats.reject(RejectReason.DECODE_ERROR)
            if self._on_rejected is not None:
                self._on_rejected(p.participant_id, RejectReason.DECODE_ERROR)
            return
        p.jitter.place(frame, pcm)

    def _play_into(self, p: ParticipantInput, frame: EncodedFrame, first: int, last: int, row: np.ndarray) -> None:
        """Play a frame of exactly one tick at the mix rate into `row`, the tick's block for `p`.

        Decoded in place (`decode_into`: no array per frame, no copy into the matrix, no second check of
        the length `push` checked), then played as the whole tick when it continues the timeline exactly;
        otherwise placed on the timeline and the tick read back, as any other frame.
        """
        jitter, decoder = p.jitter, p.decoder
        assert jitter is not None and decoder is not None
        try:
            samples = decoder.decode_into(frame.data, row)
        except DecodeError as exc:
            self._place_decoded(p, frame, exc)
            row[:] = jitter.read(first, last)
            return
        if not jitter.play_whole(frame, first, last, samples):
            jitter.place(frame, row[:samples])  # copied onto the timeline before the row is overwritten
            row[:] = jitter.read(first, last)

    def produce_tick(
        self, index: int, predecoded: Mapping[int, tuple[ParticipantInput, list[_Decoded]]] | None = None
    ) -> MixTick:
        """Build tick `index` from what is buffered now (`run()` calls this; tests may too).

        `predecoded`: what `_decode_elsewhere` decoded for this tick; the participants the batch decoder
        handles then take only those frames.
        """
        ids: list[str] = []
        # One row per participant heard this tick (at most all of them; the unused rows are cut off below).
        # `empty`, and every used row written below: `zeros` of this size releases the GIL around its calloc,
        # and each release wakes a waiting writer thread for nothing (see `Mixer.mix`).
        matrix = np.empty((len(self._participants), TICK_SAMPLES), dtype=np.float32)
        by_rate: dict[int, dict[str, np.ndarray]] = {}
        drained: list[ParticipantInput] = []
        batch, decoded_here = (self._batch, predecoded) if predecoded is not None else (None, {})
        for p in list(self._participants.values()):
            pid = p.participant_id
            jitter, decoder = p.jitter, p.decoder
            if jitter is None or decoder is None:
                if p.present:  # in the call without audio (video only): a silent row
                    matrix[len(ids)] = 0.0
                    ids.append(pid)
                continue
            rate = p.rate
            first, last = index * rate // 50, (index + 1) * rate // 50
            this_tick: list[_Decoded] = []
            if batch is not None and p.offloaded:
                entry = decoded_here.get(id(p))
                if entry is not None and entry[0] is p:
                    this_tick = entry[1]
            else:
                due = jitter.pop_due(last)
                if len(due) == 1 and rate == OUTPUT_SAMPLE_RATE and due[0].samples == TICK_SAMPLES:
                    # The common case, one 20 ms frame at the mix rate: decoded straight into its row.
                    self._play_into(p, due[0], first, last, matrix[len(ids)])
                    ids.append(pid)
                    if not p.present and jitter.pending_until() is None:
                        drained.append(p)
                    continue
                for frame in due:
                    try:
                        pcm: np.ndarray | DecodeError = decoder.decode(frame.data)
                    except DecodeError as exc:
                        pcm = exc
                    this_tick.append((frame, pcm))
            if (len(this_tick) == 1 and not isinstance(pcm := this_tick[0][1], DecodeError)
                    and jitter.play_whole(this_tick[0][0], first, last, len(pcm))):
                block = pcm  # one frame, exactly this tick: no trip through the timeline
            else:
                for frame, outcome in this_tick:
                    self._place_decoded(p, frame, outcome)
                block = jitter.read(first, last)
            if rate == OUTPUT_SAMPLE_RATE:
                matrix[len(ids)] = block
            else:
                by_rate.setdefault(rate, {})[pid] = block
            ids.append(pid)
            if not p.present and jitter.pending_until() is None:
                drained.append(p)
        resampled: dict[str, np.ndarray] = {}
        for rate, native in by_rate.items():
            bank = self._banks.get(rate)
            if bank is None:
                bank = self._codecs.resampler_bank(rate, OUTPUT_SAMPLE_RATE, TICK_SAMPLES)
                self._banks[rate] = bank
            resampled.update(bank.process(native))
        if resampled:
            for row, pid in enumerate(ids):
                if (converted := resampled.get(pid)) is not None:
                    matrix[row] = converted
        result = self._mixer.mix(ids, matrix[: len(ids)])
        tick = MixTick(
            index=index,
            start_us=index * TICK_US,
            time=self.clock.tick_time(index),
            mixed=result.mixed,
            participants=ParticipantBlocks(ids, result),
            speaking=dict(zip(ids, result.speaking, strict=True)),
            names=self._names_view,
        )
        for p in drained:
            self._drop(p)
        return tick
