"""Hybrid mode's forwarder: every committed spool event goes to JetStream once, whatever NATS does.

Emit is untouched: it commits to the spool as in ``local_only`` mode, so it
never blocks or fails because NATS is down or slow. The forwarder lists the
spool's committed events (:mod:`poetctl.backends.fs.outbox`), publishes those
its forwarded log does not name, in id order (emit order), each with
``Nats-Msg-Id`` = event id, and records them as forwarded only after their
PubAck. A crash between the PubAck and the record re-publishes a few events
on restart; JetStream's duplicate window drops them (``Nats-Msg-Id``), so the
stream holds each event once. While NATS is unreachable the backlog stays in
the spool and the forwarder retries with exponential backoff (capped).

Runs in its own thread with its own event loop (:class:`ForwarderThread`,
what ``daemon --mode hybrid`` starts), or in the foreground (``poetctl forward``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import SpoolIOError
from ..fs.layout import SpoolLayout
from ..fs.outbox import Backlog, ForwardedLog, backlog_of, committed, read_committed
from ..fs.reader import CorruptEvent, decode_event
from ._link import STREAM, Link, subject_of

ORIGIN_HEADER = "Poet-Origin"
ORIGIN = "poet"


@dataclass
class ForwardStats:
    """What ``status`` and the tests see of a running forwarder."""

    forwarded: int = 0
    duplicates: int = 0
    rounds: int = 0
    failures: int = 0
    skipped: int = 0
    connected: bool = False
    last_error: str = ""
    backlog: Backlog = field(default_factory=lambda: Backlog(0, None))


class Forwarder:
    """Forwards a spool's committed events to the JetStream stream ``stream``.

    ``batch`` events are in flight at once (``publish_async``); a batch is
    recorded with one write and one fsync. ``ack_timeout`` bounds the wait
    for a batch's PubAcks; on timeout or any NATS error the batch's
    unacknowledged events stay in the backlog and the forwarder backs off
    (``min_backoff`` doubling to ``max_backoff``).
    """

    def __init__(
        self,
        layout: SpoolLayout,
        link: Link,
        *,
        stream: str = STREAM,
        batch: int = 512,
        ack_timeout: float = 5.0,
        idle_wait: float = 0.1,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_event_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.link = link
        self.stream = stream
        self.batch = batch
        self.ack_timeout = ack_timeout
        self.idle_wait = idle_wait
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_event_bytes = max_event_bytes
        self.clock = clock
        self.stats = ForwardStats()
        self.log = ForwardedLog(layout)
        # Ids this process could not read as events (the daemon quarantines them): not retried each round.
        self._bad: set[str] = set()
        self._nc: Any = None
        self._js: Any = None
        self._quiet: tuple[int, ...] | None = None

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Forward until ``stop`` is set; never raises for NATS trouble (it backs off and retries)."""
        backoff = self.min_backoff
        first = True
        try:
            while not stop.is_set():
                try:
                    sent = await self.round(compact=first)
                    first = False
                    backoff = self.min_backoff
                    if sent == 0:
                        await _wait(stop, self.idle_wait)
                except SpoolIOError:
                    raise  # the spool itself failed: the daemon reports it and exits
                except Exception as exc:  # NATS down, slow, stream missing: keep the backlog, retry
                    self.stats.failures += 1
                    self.stats.last_error = _describe(exc)
                    await self._drop_connection_if_closed()
                    await _wait(stop, backoff)
                    backoff = min(self.max_backoff, backoff * 2)
        finally:
            await self.close()

    async def round(self, *, compact: bool = False) -> int:
        """Forward everything not yet forwarded; return how many were newly acknowledged."""
        self.stats.rounds += 1
        if self._unchanged():
            return 0
        listed = committed(self.layout)
        if compact and len(self.log.segments()) > 1:
            self.log.compact(listed)
        elif len(self.log.ids) > 2 * len(listed) + 100_000:
            self.log.compact(listed)  # the spool was pruned: drop ids of events it no longer has
        todo = sorted(i for i in listed if i not in self.log.ids and i not in self._bad)
        self.stats.backlog = backlog_of(todo, self.clock())
        if not todo:
            return 0
        js = await self._jetstream()
        sent = 0
        for start in range(0, len(todo), self.batch):
            chunk = todo[start : start + self.batch]
            sent += await self._forward(js, chunk, listed)
            self.stats.backlog = backlog_of(todo[start + len(chunk) :], self.clock())
        return sent

    async def _forward(self, js: Any, ids: list[str], listed: dict[str, str]) -> int:
        futures: list[tuple[str, asyncio.Future[Any]]] = []
        for event_id in ids:
            item = self._load(event_id, listed[event_id])
            if item is None:
                continue
            subject, data = item
            headers = {"Nats-Msg-Id": event_id, ORIGIN_HEADER: ORIGIN}
            futures.append((event_id, await js.publish_async(subject, data, headers=headers)))
        if not futures:
            return 0
        done, pending = await asyncio.wait([f for _, f in futures], timeout=self.ack_timeout)
        acked: list[str] = []
        error: BaseException | None = None
        for event_id, fut in futures:
            if fut in done and fut.exception() is None:
                acked.append(event_id)
                if getattr(fut.result(), "duplicate", False):
                    self.stats.duplicates += 1
            elif fut in done:
                error = error or fut.exception()
        for fut in pending:
            fut.cancel()
        # Record what was acknowledged even when the rest failed: those are in the stream.
        self.log.record(acked)
        self.stats.forwarded += len(acked)
        if error is not None:
            raise error
        if pending:
            raise TimeoutError(f"{len(pending)} of {len(futures)} PubAcks not received within {self.ack_timeout}s")
        return len(acked)

    def _load(self, event_id: str, hint: str) -> tuple[str, bytes] | None:
        try:
            data = read_committed(self.layout, event_id, hint, self.max_event_bytes)
            if data is None:
                return None  # pruned or purged meanwhile: nothing to forward
            event = decode_event(data, None, expected_id=event_id, validate_payload=False)
        except CorruptEvent:
            self._bad.add(event_id)
            self.stats.skipped += 1
            return None
        return subject_of(event.topic), data

    def _unchanged(self) -> bool:
        """True if no event directory changed since a round that left nothing to do (an idle spool is free).

        Only trusted once the directories have been quiet for a second: a
        change within the filesystem's coarse clock tick may not move mtime.
        """
        marks = _dir_marks(self.layout)
        quiet = marks is not None and all(time.time_ns() - m > 1_000_000_000 for m in marks)
        same = quiet and marks == self._quiet and self.stats.backlog.count == 0
        self._quiet = marks if quiet else None
        return same

    # -- the connection ---------------------------------------------------------------------------

    async def _jetstream(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            self._nc = await self.link.connect()
            self._js = self._nc.jetstream(publish_async_max_pending=max(4000, 2 * self.batch))
        self.stats.connected = self._nc.is_connected
        return self._js

    async def _drop_connection_if_closed(self) -> None:
        if self._nc is not None and self._nc.is_closed:
            self._nc = self._js = None
        self.stats.connected = bool(self._nc is not None and self._nc.is_connected)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception:  # closing a broken connection: nothing left to save
                pass
        self.log.close()


def _dir_marks(layout: SpoolLayout) -> tuple[int, ...] | None:
    marks = []
    for d in (layout.pending, layout.inflight, layout.processed, layout.dead, *layout.inflight_dirs()):
        try:
            marks.append(os.lstat(d).st_mtime_ns)
        except FileNotFoundError:
            marks.append(0)
        except OSError:
            return None
    return tuple(marks)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ForwarderThread:
    """A :class:`Forwarder` on its own thread and event loop: start it, read ``stats``, stop it.

    What ``daemon --mode hybrid`` runs beside its handlers. ``error`` holds a
    spool failure that ended the thread (NATS failures never end it).
    """

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="poet-forwarder", daemon=True)

    @property
    def stats(self) -> ForwardStats:
        return self.forwarder.stats

    def start(self) -> ForwarderThread:
        self._thread.start()
        self._ready.wait()
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._stop = asyncio.Event()
            self._ready.set()
            loop.run_until_complete(self.forwarder.run(self._stop))
        except BaseException as exc:  # reported through .error; the thread must not die silently
            self.error = exc
        finally:
            self._ready.set()
            loop.close()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the forwarder to stop after its current batch and wait for the thread."""
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass  # the loop finished meanwhile
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()
