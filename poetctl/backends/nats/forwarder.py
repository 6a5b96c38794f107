"""Hybrid mode's forwarder: every committed spool event goes to JetStream once, whatever NATS does.

Emit is untouched: it commits to the spool as in ``local_only`` mode, so it
never blocks or fails because NATS is down or slow. The forwarder lists the
spool's committed events (:mod:`poetctl.backends.fs.outbox`), publishes those
its forwarded log does not name, in id order (emit order), through the NATS
transport's own publish (the same subjects, partitions, ``Nats-Msg-Id`` and
KV state as ``nats`` mode, so ``daemon --mode nats`` consumes them), and
records them as forwarded only after their PubAck.

Per-key order: a key's events are emitted one after the other, so their ids
sort in emit order, and a round that names every event committed before it
ended publishes them in order. A plain listing does not (events move between
directories while it runs: see :func:`~..fs.outbox.committed`), so each
round also takes the names that arrived in ``pending/`` while it listed
(:class:`~..fs.arrivals.Arrivals`); every event it could have missed is among
them. An event named but not readable anywhere (it was moving, or was pruned)
ends the batch before it: nothing after it is published until a later round
has found it or shown it gone.

Nothing doubled: a crash between the PubAck and the record re-publishes at
most the batches in flight. Within the duplicate window JetStream drops the
copies (``Nats-Msg-Id``); beyond it, the first round after a start reads
the ids the stream stored since the oldest unrecorded event was made (one
headers-only pass) and records those as forwarded instead of publishing them
again. (Fresh events have no entry in the state bucket, so the bucket
cannot say.) Nothing lost: the backlog stays in the spool
while NATS is unreachable, and the forwarder retries with exponential backoff
(capped). Runs on its own thread (:class:`ForwarderThread`, what
``daemon --mode hybrid`` starts) or in the foreground (``poetctl forward``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...errors import PoetError, SpoolIOError
from ...transport import Outgoing
from ..fs.arrivals import Arrivals
from ..fs.layout import SpoolLayout
from ..fs.outbox import Backlog, ForwardedLog, add_names, backlog_of, committed, read_committed
from ..fs.reader import CorruptEvent, decode_event
from ..fs.safefs import open_dir

# Passes per round: one, and more only while a pass stops early (an event that keeps moving waits a round).
PASSES = 4


class Sink(Protocol):
    """What the forwarder publishes through: a transport's ``publish`` (and ``close``)."""

    def publish(self, items: Sequence[Outgoing]) -> list[bool]: ...

    def close(self) -> None: ...


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
    # Rounds started over because the arrivals watch may have lost a name (an inotify overflow).
    relisted: int = 0
    # False where inotify is unavailable: per-key order then rests on the listing alone.
    watched: bool = False
    backlog: Backlog = field(default_factory=lambda: Backlog(0, None))


class Forwarder:
    """Forwards a spool's committed events through ``connect()``'s sink (a NATS transport).

    ``batch`` events are published as one group (the transport pipelines
    them) and recorded with one write and one fsync. On any failure of the
    sink the batch stays in the backlog and the forwarder backs off
    (``min_backoff`` doubling to ``max_backoff``) and reconnects.
    """

    def __init__(
        self,
        layout: SpoolLayout,
        connect: Callable[[], Sink],
        *,
        batch: int = 512,
        idle_wait: float = 0.1,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_event_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.time,
        step: Callable[[str], None] | None = None,
    ) -> None:
        self.layout = layout
        self.connect = connect
        self.batch = batch
        self.idle_wait = idle_wait
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_event_bytes = max_event_bytes
        self.clock = clock
        # Called after each directory of a round's listing (tests move files there).
        self.step = step
        self.stats = ForwardStats()
        self.log = ForwardedLog(layout)
        # Ids this process could not read as events (the daemon quarantines them): not retried each round.
        self._bad: set[str] = set()
        self._sink: Sink | None = None
        self._quiet: tuple[int, ...] | None = None
        # Until one round has completed, ids are published as keyed (looked up before publishing).
        self._fresh_start = True
        self._arrivals: Arrivals | None = None
        self._watch_tried = False

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Forward until ``stop`` is set; never raises for NATS trouble (it backs off and retries).

        A spool failure (:class:`SpoolIOError`) ends it: the caller reports it.
        """
        backoff = self.min_backoff
        try:
            while not stop.is_set():
                try:
                    sent = self.round(stop)
                    backoff = self.min_backoff
                    if sent == 0:
                        stop.wait(self.idle_wait)
                except SpoolIOError:
                    raise
                except Exception as exc:  # NATS down, slow, not set up: keep the backlog, retry
                    self.note_failure(exc)
                    stop.wait(backoff)
                    backoff = min(self.max_backoff, backoff * 2)
        finally:
            self.close()

    def note_failure(self, exc: BaseException) -> None:
        self.stats.failures += 1
        self.stats.last_error = exc.message if isinstance(exc, PoetError) else _describe(exc)
        self.stats.connected = False
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception:  # closing a broken connection: nothing left to save
                pass

    def round(self, stop: threading.Event | None = None) -> int:
        """Forward everything not yet forwarded; return how many were newly acknowledged.

        A pass that had to stop early (an event moving while it was read, a
        lost arrival) is followed at once by another, which finds it where it
        went, so one round (``forward --once``) still forwards everything committed.
        """
        self.stats.rounds += 1
        sent = 0
        for _ in range(PASSES):
            n, whole = self._pass(stop)
            sent += n
            if whole:
                break
        return sent

    def _pass(self, stop: threading.Event | None) -> tuple[int, bool]:
        """One listing and its forwarding; (newly acknowledged, False if it stopped early to look again)."""
        arrivals = self._watch()
        if arrivals is not None:
            arrivals.take()  # arrivals before this round's listing starts are listed (or arrive again)
        if self._unchanged():
            return 0, True
        listed = committed(self.layout, self._on_step)
        if arrivals is not None:
            names = arrivals.take()
            if not arrivals.complete:  # a name may be lost: list again from scratch
                self.stats.relisted += 1
                self._drop_watch()
                return 0, False
            add_names(listed, names, "events/pending")
        if self._fresh_start and len(self.log.segments()) > 1:
            self.log.compact(listed)
        elif len(self.log.ids) > 2 * len(listed) + 100_000:
            self.log.compact(listed)  # the spool was pruned: drop ids of events it no longer has
        todo = sorted(i for i in listed if i not in self.log.ids and i not in self._bad)
        self.stats.backlog = backlog_of(todo, self.clock())
        if self._fresh_start and todo:
            todo = self._not_in_stream(todo)  # may fail (NATS down): the backlog above is what waits
            self.stats.backlog = backlog_of(todo, self.clock())
        sent = 0
        for start in range(0, len(todo), self.batch):
            if stop is not None and stop.is_set():
                return sent, True
            chunk = todo[start : start + self.batch]
            n, whole = self._forward(chunk, listed)
            sent += n
            if not whole:  # an event was not where it was listed: the next pass looks again
                return sent, False
            self.stats.backlog = backlog_of(todo[start + len(chunk) :], self.clock())
        self._fresh_start = False
        return sent, True

    def _not_in_stream(self, todo: list[str]) -> list[str]:
        """At a start: drop (and record) the ids the stream has already, published before a crash that came
        before their record. JetStream drops such copies itself only within its duplicate window."""
        from .derive import SKEW, id_time, ids_since
        from .transport import NatsTransport

        if self._sink is None:
            self._sink = self.connect()
        sink = self._sink
        if not isinstance(sink, NatsTransport):
            return todo  # a sink that is not a stream (tests): nothing to look up
        times = [t for t in map(id_time, todo) if t is not None]
        since = min(times) - SKEW if len(times) == len(todo) else 0.0  # an id without a time: the whole stream
        there = sink.link.run(ids_since(sink, since), timeout=300)
        known = [i for i in todo if i in there]
        if not known:
            return todo
        self.log.record(known)
        self.stats.duplicates += len(known)
        return [i for i in todo if i not in there]

    def _on_step(self, rel: str) -> None:
        if self._arrivals is not None:
            self._arrivals.poll()  # keep the kernel's queue short while a big directory is listed
        if self.step is not None:
            self.step(rel)

    def _watch(self) -> Arrivals | None:
        """The arrivals watch on ``pending/``, started once (None where inotify is unavailable)."""
        if self._arrivals is None and not self._watch_tried:
            self._watch_tried = True
            pending = open_dir(self.layout, "events/pending")
            if pending is not None:
                with pending:
                    try:
                        self._arrivals = Arrivals(pending.fd)
                    except OSError:
                        self._arrivals = None
            self.stats.watched = self._arrivals is not None
        return self._arrivals

    def _drop_watch(self) -> None:
        arrivals, self._arrivals = self._arrivals, None
        self._watch_tried = False
        if arrivals is not None:
            arrivals.close()

    def _forward(self, ids: list[str], listed: dict[str, str]) -> tuple[int, bool]:
        """Publish ``ids`` in order; stop before the first one no longer found (False: the rest waits)."""
        items: list[Outgoing] = []
        whole = True
        for event_id in ids:
            try:
                item = self._load(event_id, listed[event_id])
            except _Vanished:
                whole = False
                break
            if item is not None:
                items.append(item)
        if not items:
            return 0, whole
        if self._sink is None:
            self._sink = self.connect()
        added = self._sink.publish(items)
        self.stats.connected = True
        # Every item is in the stream now: added, or already there (a duplicate dropped by the server).
        self.log.record(it.event.id for it in items)
        self.stats.forwarded += sum(added)
        self.stats.duplicates += len(items) - sum(added)
        return len(items), whole

    def _load(self, event_id: str, hint: str) -> Outgoing | None:
        try:
            data = read_committed(self.layout, event_id, hint, self.max_event_bytes)
            if data is None:
                # Moving backwards while looked for, or pruned: either way the next round's listing says.
                raise _Vanished(event_id)
            event = decode_event(data, None, expected_id=event_id, validate_payload=False)
        except CorruptEvent:
            self._bad.add(event_id)
            self.stats.skipped += 1
            return None
        return Outgoing(event, data, self._fresh_start)

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

    def close(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception:  # closing a broken connection: nothing left to save
                pass
        self._drop_watch()
        self.log.close()


class _Vanished(Exception):
    """A listed event is in none of the event directories when read."""


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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def nats_sink(nats_table: Any) -> Callable[[], Sink]:
    """``connect`` for a :class:`Forwarder`: a NATS transport from ``[nats]`` / ``POET_NATS_URL``."""

    def connect() -> Sink:
        from .settings import NatsSettings
        from .transport import NatsTransport

        return NatsTransport(NatsSettings.from_config(nats_table))

    return connect


class ForwarderThread:
    """A :class:`Forwarder` on its own thread: start it, read ``stats``, stop it.

    What ``daemon --mode hybrid`` runs beside its handlers. ``error`` holds a
    spool failure that ended the thread (NATS failures never end it).
    """

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="poet-forwarder", daemon=True)

    @property
    def stats(self) -> ForwardStats:
        return self.forwarder.stats

    def start(self) -> ForwarderThread:
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self.forwarder.run(self._stop)
        except BaseException as exc:  # reported through .error; the thread must not die silently
            self.error = exc

    def stop(self, timeout: float | None = None) -> None:
        """Ask the forwarder to stop after its current batch and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()
