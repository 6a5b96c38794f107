"""The memory backend's store and publisher (see the package docstring)."""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from ...errors import InvalidData
from ...event import Event
from ...partition import KeyFunction, key_function
from ...priority import DEFAULT_SHARES, NORMAL, class_of
from ...transport import (
    Outgoing,
    Quarantined,
    Query,
    Record,
    State,
    Stored,
    quarantine_line,
)
from .consumer import MemoryConsumer
from .entries import Entry, decode, sort_key


class MemoryTransport:
    """The store and publisher: shared by every consumer made from it. Thread-safe.

    ``clock`` decides what is due (``not_before``) and stamps arrivals and
    quarantines; ``key_of`` is the partition key (default: the daemon's).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        key_of: KeyFunction | None = None,
        priority_shares: dict[str, int] | None = None,
    ) -> None:
        self.clock = clock
        self.shares = priority_shares or DEFAULT_SHARES
        self._classed = 0  # pending entries that are not normal: while 0, fetch walks in plain order
        self.key_of = key_of or key_function()
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        self._pending: list[tuple[str, str]] = []  # (sort key, id), sorted
        self._consumers: dict[str, MemoryConsumer] = {}
        self._dead_consumers: set[str] = set()
        self._holders: dict[str, tuple[str, int]] = {}  # key -> (consumer, leases of that key)
        self._names = itertools.count(1)

    # -- publishing ---------------------------------------------------------------------
    def publish(self, items: Sequence[Outgoing]) -> list[bool]:
        with self._lock:
            for it in items:
                e = self._entries.get(it.event.id)
                if e is not None and e.state is State.CORRUPT:
                    raise Quarantined(
                        f"id {e.id} exists in corrupt/ (quarantined: {quarantine_line(e.info)}); nothing was written. "
                        "Requeue it once fixed, or emit under another id"
                    )
            added: list[bool] = []
            now = self.clock()
            for it in items:
                ev = it.event
                if ev.id in self._entries:
                    added.append(False)
                    continue
                e = Entry(ev.id, bytes(it.data), sort_key(ev.id, now), ev.timestamp, self.key_of(ev), class_of(ev))
                self._entries[ev.id] = e
                self._classed += e.prio != NORMAL
                bisect.insort(self._pending, (e.sort, e.id))
                added.append(True)
            if any(added):
                self._wake_all()
            return added

    def put_raw(self, name: str, data: bytes) -> None:
        """Test hook: input under ``name`` that fetch has to read (and may have to quarantine)."""
        with self._lock:
            if name in self._entries:
                raise ValueError(f"{name!r} exists")
            e = Entry(name, data, sort_key(name, self.clock()), self.clock(), None)
            self._entries[name] = e
            bisect.insort(self._pending, (e.sort, name))
            self._wake_all()

    def _wake_all(self) -> None:
        for c in self._consumers.values():
            c.interrupt()

    # -- consumers ------------------------------------------------------------------------
    def consumer(self, name: str | None = None) -> MemoryConsumer:
        with self._lock:
            name = name or f"memory-{next(self._names)}"
            if name in self._consumers or name in self._dead_consumers:
                raise ValueError(f"consumer {name!r} exists; names identify one consumer for good")
            c = MemoryConsumer(self, name)
            self._consumers[name] = c
            return c

    # Helpers for MemoryConsumer, called with the lock held.
    def _hold(self, key: str, owner: str) -> None:
        _, n = self._holders.get(key, (owner, 0))
        self._holders[key] = (owner, n + 1)

    def _unhold(self, key: str) -> None:
        owner, n = self._holders[key]
        if n <= 1:
            del self._holders[key]
        else:
            self._holders[key] = (owner, n - 1)

    def _to_pending(self, e: Entry) -> None:
        e.state, e.owner = State.PENDING, None
        self._classed += e.prio != NORMAL
        bisect.insort(self._pending, (e.sort, e.id))

    # -- queries ------------------------------------------------------------------------------
    def state_of(self, event_id: str) -> State | None:
        with self._lock:
            e = self._entries.get(event_id)
            return e.state if e is not None else None

    def get(self, event_id: str) -> Stored | None:
        with self._lock:
            e = self._entries.get(event_id)
            if e is None:
                return None
            return Stored(e.id, e.state, self._event(e), dict(e.info) if e.info else None)

    def record_of(self, event_id: str) -> Record | None:
        """A copy of the event's record (not part of the contract: for tests that look inside)."""
        with self._lock:
            e = self._entries.get(event_id)
            return e.record.copy() if e is not None else None

    @staticmethod
    def _event(e: Entry) -> Event | None:
        try:
            return decode(e.data, e.id)
        except InvalidData:
            return None

    def select(self, query: Query, limit: int | None = None) -> Iterator[Stored]:
        with self._lock:
            entries = sorted((e for e in self._entries.values() if e.state in query.states), key=lambda e: e.sort)
        n = 0
        for e in reversed(entries):
            if limit is not None and n >= limit:
                return
            ev = self._event(e)
            if ev is None or not query.match(ev):
                continue
            n += 1
            yield Stored(e.id, e.state, ev, dict(e.info) if e.info else None)

    def counts(self) -> dict[State, int]:
        with self._lock:
            out = dict.fromkeys(State, 0)
            for e in self._entries.values():
                out[e.state] += 1
            return out

    def prune(self, before: float, states: Sequence[State] = (State.PROCESSED,)) -> int:
        bad = {State.PENDING, State.INFLIGHT, State.CORRUPT} & set(states)
        if bad:  # quarantined input is kept for an operator, never deleted (as on the spool)
            raise ValueError(f"prune removes processed and dead events only, not {sorted(bad)}")
        with self._lock:
            gone = [e.id for e in self._entries.values() if e.state in states and e.timestamp < before]
            for i in gone:
                del self._entries[i]
            return len(gone)

    def close(self) -> None:
        return None
