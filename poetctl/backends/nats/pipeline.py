"""Sends that nobody waits for one by one: a consumer's begin/ack records and acks, in order, batched per loop hop.

Worker threads call :meth:`Pipeline.send` with a coroutine; the first send
of a burst schedules one callback on the link's loop, which runs every
queued coroutine in order (under one asyncio lock, so bursts never
interleave on the wire) in a single task. A coroutine may return a future
(a PubAck to come): those are awaited together after the sends, so a burst
costs one round trip, not one per message. :meth:`drain` (on the loop)
waits for everything sent so far and returns the first failure.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


class Pipeline:
    """Ordered, batched fire-and-confirm-later sends on one asyncio loop. ``send`` is thread-safe."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._queue: list[list[Any]] = []  # [coroutine or None (superseded), key]
        self._keyed: dict[str, list[Any]] = {}  # key -> its entry still in the queue
        self._kicked = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._order: asyncio.Lock | None = None
        self._failure: BaseException | None = None

    def send(self, coro: Coroutine[Any, Any, Any], key: str | None = None, supersede: bool = False) -> None:
        """Queue ``coro``; it runs on the loop after everything queued before it.

        With ``supersede``, a coroutine queued under the same ``key`` and not started yet is dropped:
        an event's ack record makes its begin record moot when both are in one burst (a fast handler),
        which halves what a burst sends.
        """
        entry = [coro, key]
        with self._lock:
            if key is not None:
                old = self._keyed.pop(key, None) if supersede else None
                if old is not None and old[0] is not None:
                    old[0].close()  # never started: nothing of it was sent
                    old[0] = None
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

    async def _run(self, burst: list[Coroutine[Any, Any, Any]]) -> None:
        if self._order is None:
            self._order = asyncio.Lock()
        confirms = []
        async with self._order:
            for coro in burst:
                try:
                    fut = await coro
                except Exception as exc:  # recorded for drain(); the rest of the burst still goes out
                    self._failure = self._failure or exc
                    continue
                if fut is not None:
                    confirms.append(fut)
        for r in await asyncio.gather(*confirms, return_exceptions=True):
            if isinstance(r, BaseException):
                self._failure = self._failure or r

    async def drain(self) -> BaseException | None:
        """Wait (on the loop) for everything sent so far; the first failure since the last drain, if any."""
        self._kick()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        failure, self._failure = self._failure, None
        return failure


__all__ = ["Pipeline"]
