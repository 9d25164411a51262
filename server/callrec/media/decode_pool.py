"""Opus decoding handed to worker processes, one request per call tick (`--decode-workers`).

`CallMedia` gathers a call's due Opus packets once per tick and awaits `DecodePool.decode`; the
pool sends them to the worker process that holds those participants' decoders
(`callrec.media.decode_worker`) and resumes the tick with the PCM. The event loop then spends a
few microseconds per packet on pickling instead of ~15 µs in libopus, and the decoding runs on
another core.

Why the details are as they are:
* A participant's decoder is pinned to one worker at its first packet: Opus is stateful, so its
  packets must all reach the same state, in order (a call has one tick in flight at a time).
* Pipes are non-blocking on the loop's side, with the loop's reader and writer callbacks: a
  worker that falls behind makes its calls' ticks wait, it never blocks the loop.
* Nothing is lost when a worker fails. If it exits, or does not answer within
  `REQUEST_TIMEOUT_S` (then it is killed), the packets in flight are decoded on the loop by
  the participants' own in-process decoders, and the next tick starts a new worker. Decoder
  state starts afresh there, as after a lost packet.
* Workers start at the first Opus packet, not with the server, so servers that never see Opus
  (most tests) start none.

Wire format (`media.pipe_channel`'s), both ways: a 4-byte little-endian length, then a pickle. Requests are
`("decode", id, rate, [(key, packet), ...])` and `("forget", [key, ...])`; answers are
`(id, [samples per packet], {index: error}, float32 bytes of all packets)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from subprocess import Popen
from typing import Any

import numpy as np

from callrec.core.log import get_logger
from callrec.core.model import OUTPUT_SAMPLE_RATE, DecodeError
from callrec.core.ports import FrameDecoder
from callrec.media.pipe_channel import HEADER, READ_SIZE, append_frame, take_messages, widen_pipe

__all__ = ["HEADER", "READ_SIZE", "DecodePool", "take_messages"]  # the wire format is `media.pipe_channel`'s

log = get_logger(__name__)

#: A worker that has not answered a request in this long is killed; its packets are decoded here.
REQUEST_TIMEOUT_S = 2.0


class _WorkerLost(Exception):
    """The worker exited or was killed with requests in flight."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"no answer within {REQUEST_TIMEOUT_S} s"))


#: A worker's answer to one request: each packet's length in samples, errors by index, the PCM (a bytearray
#: as `decode_worker` builds it; exact, since the compiled build checks it at run time).
_Answer = tuple[list[int], dict[int, str], bytes | bytearray]


@dataclass(eq=False)
class _Worker:
    """One decode process and the loop's side of its pipes."""

    process: Popen[bytes]
    commands: int  # non-blocking, parent -> child
    results: int  # non-blocking, child -> parent
    # The loop its result pipe is registered with, kept: `asyncio.get_running_loop()` calls getpid() (a system
    # call) each time, and a request took three of them (2.4 % of the loop's samples at 480 participants in 1:1 calls).
    loop: asyncio.AbstractEventLoop
    pending: dict[int, asyncio.Future[_Answer]] = field(default_factory=dict)
    outgoing: bytearray = field(default_factory=bytearray)
    incoming: bytearray = field(default_factory=bytearray)
    forgotten: list[int] = field(default_factory=list)
    decoders: int = 0  # decoders pinned to it (to pick the least loaded)
    flush_scheduled: bool = False
    alive: bool = True


class DecodePool:
    """Up to `workers` decode processes; `decode` is what `CallMedia` awaits once per tick."""

    def __init__(self, workers: int, sample_rate: int = OUTPUT_SAMPLE_RATE) -> None:
        if workers < 0:
            raise ValueError("decode workers must be 0 or more")
        self.size = workers
        self.sample_rate = sample_rate
        self._slots: list[_Worker | None] = [None] * workers
        self._pinned: dict[int, tuple[int, _Worker]] = {}  # id(decoder) -> (key, worker)
        self._keys = itertools.count(1)
        self._requests = itertools.count(1)
        self.inline_fallbacks = 0  # packets decoded on the loop because a worker failed
        self.restarts = 0
        self._scratch = bytearray(READ_SIZE)  # every read of the workers' answers lands here first

    # ------------------------------------------------------------------ what CallMedia calls
    def handles(self, decoder: FrameDecoder) -> bool:
        """Whether this decoder's packets go to a worker (Opus decoded by libopus at the pool's rate)."""
        return self.size > 0 and getattr(decoder, "offloadable_rate", None) == self.sample_rate

    async def decode(self, items: Sequence[tuple[FrameDecoder, bytes]]) -> list[np.ndarray | DecodeError]:
        """Decode each (decoder, packet) in order; one result per item, an array or the `DecodeError`."""
        single = self._one_worker(items)
        if single is not None:  # the usual case: every decoder already pinned to one live worker
            worker, packets = single
            return await self._ask(worker, items, range(len(items)), packets)
        results: list[np.ndarray | DecodeError | None] = [None] * len(items)
        groups: dict[int, tuple[_Worker, list[int]]] = {}
        fresh: list[int] = []
        for index, (decoder, _packet) in enumerate(items):
            pinned = self._pinned.get(id(decoder))
            if pinned is None or not pinned[1].alive:
                fresh.append(index)
                continue
            groups.setdefault(id(pinned[1]), (pinned[1], []))[1].append(index)
        if fresh:  # new decoders join a worker this batch already uses, else the least loaded
            worker = next(iter(groups.values()))[0] if groups else self._least_loaded()
            entry = groups.setdefault(id(worker), (worker, []))
            for index in fresh:
                self._pin(items[index][0], worker)
                entry[1].append(index)
        if len(groups) == 1:  # the usual case: no task per request (gather would make one)
            ((worker, indices),) = groups.values()
            answers = [await self._ask(worker, items, indices)]
        else:
            answers = await asyncio.gather(*[self._ask(worker, items, indices) for worker, indices in groups.values()])
        for (_, indices), answer in zip(groups.values(), answers, strict=True):
            for index, result in zip(indices, answer, strict=True):
                results[index] = result
        return [r if r is not None else DecodeError("no result") for r in results]

    def _one_worker(
        self, items: Sequence[tuple[FrameDecoder, bytes]]
    ) -> tuple[_Worker, list[tuple[int, bytes]]] | None:
        """The worker and the (key, packet) request when one live worker holds every decoder, else None."""
        pinned = self._pinned
        worker: _Worker | None = None
        packets: list[tuple[int, bytes]] = []
        for decoder, packet in items:
            entry = pinned.get(id(decoder))
            if entry is None:
                return None
            key, owner = entry
            if owner is not worker:
                if worker is not None or not owner.alive:
                    return None
                worker = owner
            packets.append((key, packet))
        return (worker, packets) if worker is not None else None

    async def close(self) -> None:
        """Stop every worker: its command pipe closes and it exits; one that lingers 2 s is killed."""
        workers = [w for w in self._slots if w is not None]
        self._slots = [None] * self.size
        for worker in workers:
            self._retire(worker, kill=False)

        def reap() -> None:
            for worker in workers:
                try:
                    worker.process.wait(timeout=2)
                except Exception:
                    worker.process.kill()
                    worker.process.wait()

        await asyncio.to_thread(reap)

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (tests and logs)."""
        return [w.process.pid for w in self._slots if w is not None and w.alive]

    # ------------------------------------------------------------------ workers
    def _least_loaded(self) -> _Worker:
        """The worker with the fewest decoders; an empty slot counts as none, and its worker starts now."""

        def load(slot: int) -> int:
            worker = self._slots[slot]
            return worker.decoders if worker is not None and worker.alive else 0

        slot = min(range(self.size), key=load)
        worker = self._slots[slot]
        if worker is None or not worker.alive:
            worker = self._start(slot)
        return worker

    def _start(self, slot: int) -> _Worker:
        from callrec.child_process import start_child

        child = start_child("callrec.media.decode_worker")
        commands, results = child.commands.fileno(), child.events.fileno()
        # The Connection objects only carried the descriptors: keep them, drop the wrappers.
        commands, results = os.dup(commands), os.dup(results)
        child.commands.close()
        child.events.close()
        os.set_blocking(commands, False)
        os.set_blocking(results, False)
        for fd in (commands, results):
            widen_pipe(fd)
        loop = asyncio.get_running_loop()
        worker = _Worker(child.process, commands, results, loop)
        loop.add_reader(results, self._on_readable, worker)
        if self._slots[slot] is not None:
            self.restarts += 1
        self._slots[slot] = worker
        log.info("decode worker started", pid=child.process.pid, slot=slot)
        return worker

    def _pin(self, decoder: FrameDecoder, worker: _Worker) -> None:
        key = next(self._keys)
        self._pinned[id(decoder)] = (key, worker)
        worker.decoders += 1
        weakref.finalize(decoder, self._forget, id(decoder), key, worker)

    def _forget(self, decoder_id: int, key: int, worker: _Worker) -> None:
        """The decoder was collected: its worker-side state goes with the next request."""
        if self._pinned.get(decoder_id, (None, None))[0] == key:
            del self._pinned[decoder_id]
        worker.decoders -= 1
        if worker.alive:
            worker.forgotten.append(key)

    async def _ask(self, worker: _Worker, items: Sequence[tuple[FrameDecoder, bytes]], indices: Sequence[int],
                   packets: list[tuple[int, bytes]] | None = None) -> list[np.ndarray | DecodeError]:
        request_id = next(self._requests)
        future: asyncio.Future[_Answer] = worker.loop.create_future()
        try:
            if worker.forgotten:
                forgotten, worker.forgotten = worker.forgotten, []
                self._send(worker, ("forget", forgotten))
            if packets is None:
                packets = [(self._pinned[id(items[i][0])][0], items[i][1]) for i in indices]
            worker.pending[request_id] = future
            self._send(worker, ("decode", request_id, self.sample_rate, packets))
            # Not asyncio.wait_for: it wraps the future in a task of its own, on every tick of every call.
            timer = worker.loop.call_later(REQUEST_TIMEOUT_S, _expire, future)
            try:
                lengths, errors, data = await future
            finally:
                timer.cancel()
        except (_WorkerLost, TimeoutError, OSError, KeyError) as exc:
            worker.pending.pop(request_id, None)
            if worker.alive:
                log.warning("decode worker did not answer: killed; its packets are decoded here",
                            pid=worker.process.pid, error=repr(exc))
                self._retire(worker, kill=True)
            return self._inline(items, indices)
        pcm = np.frombuffer(data, dtype=np.float32)
        out: list[np.ndarray | DecodeError] = []
        offset = 0
        for n, length in enumerate(lengths):
            if n in errors:
                out.append(DecodeError(f"Opus decoder rejected the packet: {errors[n]}"))
                continue
            out.append(pcm[offset:offset + length])
            offset += length
        return out

    def _inline(self, items: Sequence[tuple[FrameDecoder, bytes]],
                indices: Sequence[int]) -> list[np.ndarray | DecodeError]:
        """Decode on the loop with each participant's own decoder (a worker failed: nothing is dropped)."""
        self.inline_fallbacks += len(indices)
        out: list[np.ndarray | DecodeError] = []
        for i in indices:
            decoder, packet = items[i]
            try:
                out.append(decoder.decode(packet))
            except DecodeError as exc:
                out.append(exc)
        return out

    def _send(self, worker: _Worker, message: tuple[object, ...]) -> None:
        """Queue a message; the calls ticking in this turn of the loop go out in one write."""
        if not worker.outgoing and not worker.flush_scheduled:
            worker.flush_scheduled = True
            worker.loop.call_soon(self._flush, worker)
        append_frame(worker.outgoing, message)

    def _flush(self, worker: _Worker) -> None:
        worker.flush_scheduled = False
        if not worker.alive:
            return
        loop = worker.loop
        try:
            while worker.outgoing:
                written = os.write(worker.commands, worker.outgoing)
                del worker.outgoing[:written]
        except BlockingIOError:
            loop.add_writer(worker.commands, self._flush, worker)
            return
        except OSError:
            self._retire(worker, kill=True)
            return
        loop.remove_writer(worker.commands)

    def _on_readable(self, worker: _Worker) -> None:
        try:
            n = os.readv(worker.results, [self._scratch])
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            code = worker.process.poll()
            if worker.alive:
                log.warning("decode worker exited; packets in flight are decoded here, a new worker starts",
                            pid=worker.process.pid, exit_code=code)
            self._retire(worker, kill=True)
            return
        worker.incoming += memoryview(self._scratch)[:n]
        for request_id, lengths, errors, data in take_messages(worker.incoming):
            future = worker.pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result((lengths, errors, data))

    def _retire(self, worker: _Worker, *, kill: bool) -> None:
        """Stop using a worker: fail what is in flight (decoded here instead), close its pipes."""
        if not worker.alive:
            return
        worker.alive = False
        loop = worker.loop
        for fd, remove in ((worker.results, loop.remove_reader), (worker.commands, loop.remove_writer)):
            with contextlib.suppress(Exception):
                remove(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        if kill and worker.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(_WorkerLost())
        worker.pending.clear()
        for decoder_id in [d for d, (_, w) in self._pinned.items() if w is worker]:
            del self._pinned[decoder_id]
