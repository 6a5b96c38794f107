"""Sends that nobody waits for one by one: a consumer's begin/ack records and acks, in order, batched per loop hop.

Worker threads call :meth:`Pipeline.send` with an operation (a function
returning a coroutine); the first send of a burst schedules one callback on
the link's loop, which runs every queued operation in order in a single
task. An operation may return a future (a PubAck to come): those are awaited
together after the sends, so a burst costs one round trip, not one per
message. An operation that sent a plain message with no PubAck (an ack)
returns :data:`UNCONFIRMED`: the burst then ends with one flush (PING/PONG:
the server has read everything sent before it), and a failed flush sends
the burst again from the first such operation. Bursts run one after another (an asyncio lock held until the
burst's PubAcks are in), so a burst retried after a server loss never lands
behind a later one. :meth:`drain` (on the loop) waits for everything sent so
far and returns the first failure.

Through a server loss (:mod:`.retry`): a burst whose send or PubAck fails
transiently (or whose PubAck does not come within ``ACK_TIMEOUT``) is sent
again from the first failed operation on, in order, until the cluster
answers or ``OUTAGE`` runs out. Every operation must therefore be safe to
repeat (KV puts of a whole record, acks, publishes with ``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .retry import OUTAGE, confirmed_all, transient

Op = Callable[[], Awaitable[Any]]
UNCONFIRMED = object()  # an operation's result: sent, confirmed by the burst's closing flush


class Pipeline:
    """Ordered, batched fire-and-confirm-later sends on one asyncio loop. ``send`` is thread-safe."""

    def __init__(self, loop: asyncio.AbstractEventLoop, outage: float = OUTAGE, flush: Op | None = None) -> None:
        self.loop = loop
        self.flush = flush
        self.outage = outage
        self._lock = threading.Lock()
        self._queue: list[list[Any]] = []  # [operation or None (superseded), key]
        self._keyed: dict[str, list[Any]] = {}  # key -> its entry still in the queue
        self._kicked = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._order: asyncio.Lock | None = None
        self._failure: BaseException | None = None

    def send(self, op: Op, key: str | None = None, supersede: bool = False) -> None:
        """Queue ``op``; it runs on the loop after everything queued before it.

        With ``supersede``, an operation queued under the same ``key`` and not started yet is dropped:
        an event's ack record makes its begin record moot when both are in one burst (a fast handler),
        which halves what a burst sends.
        """
        entry = [op, key]
        with self._lock:
            if key is not None:
                old = self._keyed.pop(key, None) if supersede else None
                if old is not None:
                    old[0] = None  # never started: nothing of it was sent
                self._keyed[key] = entry
            self._queue.append(entry)
            if self._kicked:
                return
            self._kicked = True
        self.loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        with self._lock:
            entries, self._queue = self._queue, []
            self._keyed.clear()
            self._kicked = False
        burst = [e[0] for e in entries if e[0] is not None]
        if burst:
            task = self.loop.create_task(self._run(burst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, burst: list[Op]) -> None:
        if self._order is None:
            self._order = asyncio.Lock()
        async with self._order:
            end = self.loop.time() + self.outage
            delay = 0.05
            i = 0
            while i < len(burst):
                failed, exc = await self._attempt(burst, i)
                if failed is None:
                    return
                if exc is not None and transient(exc) and self.loop.time() + delay < end:
                    if delay == 0.05:
                        from ...daemon import log

                        log.warning("NATS did not confirm records/acks; sending them again", error=repr(exc))
                    await asyncio.sleep(delay)  # the cluster is electing or we are reconnecting
                    delay = min(1.0, delay * 2)
                    i = failed  # again from the first failure on: what followed it is repeated in order
                    continue
                self._failure = self._failure or exc  # recorded for drain(); the rest still goes out
                i = failed + 1

    async def _attempt(self, burst: list[Op], start: int) -> tuple[int | None, BaseException | None]:
        """Send ``burst[start:]`` in order, then await the PubAcks; the first failed index and its error."""
        confirms: list[tuple[int, Any]] = []
        stop: tuple[int, BaseException] | None = None
        plain: int | None = None  # the first operation confirmed by the flush
        for i in range(start, len(burst)):
            try:
                fut = await burst[i]()
            except Exception as exc:
                stop = (i, exc)
                break
            if fut is UNCONFIRMED:
                plain = i if plain is None else plain
            elif fut is not None:
                confirms.append((i, fut))
        results = await confirmed_all([f for _, f in confirms])
        if plain is not None and self.flush is not None and (stop is None or plain < stop[0]):
            try:
                await self.flush()
            except Exception as exc:
                stop = (plain, exc)
        for (i, _), r in zip(confirms, results, strict=True):
            if isinstance(r, BaseException) and (stop is None or i < stop[0]):
                stop = (i, r)
                break
        return (None, None) if stop is None else stop

    async def drain(self, keep: bool = False) -> BaseException | None:
        """Wait (on the loop) for everything sent so far; the first failure since the last drain, if any.

        ``keep``: leave the failure for the next drain (a caller that only waits, and does not report it).
        """
        self._kick()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        failure = self._failure
        if not keep:
            self._failure = None
        return failure


__all__ = ["Op", "Pipeline"]
