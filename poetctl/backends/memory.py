"""An in-memory backend: the whole transport contract in one process, like dramatiq's StubBroker.

For tests of handlers and of the daemon loop (:mod:`poetctl.testing` builds
a router and a daemon on it). Everything lives in dicts guarded by one lock;
"durable" means "recorded before return", which is all a process-local store
can promise. Events are kept as the bytes the router sealed and decoded
afresh for every delivery and query, so a handler that mutates its event
cannot change what is stored - as with a real backend.

Test hooks beyond the contract: :meth:`MemoryTransport.put_raw` (input that
fetch must quarantine, like a damaged file dropped into ``pending/``) and
:meth:`MemoryConsumer.crash` (the consumer's process died: its leases stay
until another consumer's :meth:`~MemoryConsumer.recover`).
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import InvalidData
from ..event import Event, parse_json, verify_checksum
from ..ids import time_of
from ..partition import KeyFunction, key_function
from ..priority import DEFAULT_SHARES, NORMAL, PRIORITIES, class_of, split
from ..transport import (
    Attempt,
    Delivery,
    Fetched,
    Outgoing,
    Quarantined,
    Query,
    Record,
    State,
    Stored,
    quarantine_line,
)

_REQUIRED = ("id", "type", "source", "timestamp", "topic", "payload")


class _Entry:
    """One stored event (or one piece of unreadable input, ``key`` None until read)."""

    __slots__ = ("data", "id", "info", "key", "owner", "prio", "record", "sort", "state", "timestamp")

    def __init__(self, id: str, data: bytes, sort: str, timestamp: float, key: str | None, prio: str = NORMAL) -> None:
        self.id = id
        self.prio = prio
        self.data = data
        self.sort = sort
        self.timestamp = timestamp
        self.key = key
        self.state = State.PENDING
        self.record = Record()
        self.owner: str | None = None
        self.info: dict[str, Any] | None = None


def sort_key(name: str, arrived: float) -> str:
    """Order of pending work: UUIDv7/derived ids by their own time; other names by arrival, same shape."""
    if time_of(name) is not None:
        return name
    h = f"{max(0, int(arrived * 1000)):012x}"
    return f"{h[:8]}-{h[8:12]}-~{name}"


def decode(data: bytes, expected_id: str) -> Event:
    """Bytes to a verified Event; raises InvalidData whose message starts with the quarantine reason."""
    try:
        d = parse_json(data)
    except InvalidData as exc:
        raise InvalidData(f"bad_json: {exc.message}") from None
    if not isinstance(d, dict) or any(k not in d for k in _REQUIRED):
        raise InvalidData(f"bad_envelope: expected an object with {', '.join(_REQUIRED)}")
    try:
        verify_checksum(d)
    except InvalidData as exc:
        raise InvalidData(f"bad_checksum: {exc.message}") from None
    if d["id"] != expected_id:
        raise InvalidData(f"wrong_name: stored as {expected_id!r} but the event id is {d['id']!r}")
    return Event.from_dict(d)


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
        self._entries: dict[str, _Entry] = {}
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
                e = _Entry(ev.id, bytes(it.data), sort_key(ev.id, now), ev.timestamp, self.key_of(ev), class_of(ev))
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
            e = _Entry(name, data, sort_key(name, self.clock()), self.clock(), None)
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

    def _to_pending(self, e: _Entry) -> None:
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
    def _event(e: _Entry) -> Event | None:
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


class MemoryConsumer:
    """One daemon's leases on a :class:`MemoryTransport`. Thread-safe."""

    def __init__(self, transport: MemoryTransport, name: str) -> None:
        self.t = transport
        self.name = name
        self._failing: dict[str, str] = {}  # key -> id of its failing lease
        self._wake = threading.Event()
        self._crashed = False
        self._closed = False

    def _alive(self) -> None:
        if self._crashed:
            raise RuntimeError(f"consumer {self.name} crashed; use another one")

    def _mine(self, d: Delivery) -> _Entry | None:
        """The delivery's entry if it is still leased to this consumer (else the lease was lost)."""
        self._alive()
        e: _Entry = d.handle
        return e if e.state is State.INFLIGHT and e.owner == self.name else None

    def _end(self, e: _Entry, key: str) -> None:
        self.t._unhold(key)
        if self._failing.get(key) == e.id:
            del self._failing[key]

    # -- leasing ---------------------------------------------------------------------------
    def recover(self) -> int:
        with self.t._lock:
            self._alive()
            return self._recover()

    def _recover(self) -> int:
        t = self.t
        moved = 0
        for e in t._entries.values():
            if e.state is State.INFLIGHT and e.owner in t._dead_consumers:
                t._to_pending(e)
                moved += 1
        for k in [k for k, (owner, _) in t._holders.items() if owner in t._dead_consumers]:
            del t._holders[k]
        if moved:
            t._wake_all()
        return moved

    def fetch(self, limit: int) -> Fetched:
        t = self.t
        out = Fetched()
        with t._lock:
            self._alive()
            if any(owner in t._dead_consumers for owner, _ in t._holders.values()):
                out.recovered = self._recover()  # a dead consumer's keys: take its work back before leasing them
            if t._classed:
                return self._fetch_by_priority(limit, out)
            now = t.clock()
            skipped: set[str] = set()
            keep: list[tuple[str, str]] = []
            for i, item in enumerate(t._pending):
                e = t._entries[item[1]]
                if e.key is None and not self._read(e):
                    out.quarantined += 1
                    continue
                key = e.key
                assert key is not None
                holder = t._holders.get(key)
                if key in skipped or key in self._failing:
                    keep.append(item)
                    continue
                if (holder is not None and holder[0] != self.name) or e.record.not_before > now:
                    skipped.add(key)  # later events of the key wait behind this one
                    out.deferred += 1
                    keep.append(item)
                    continue
                if len(out.deliveries) >= limit:
                    out.more = True
                    keep.extend(t._pending[i:])
                    break
                e.state, e.owner = State.INFLIGHT, self.name
                t._hold(key, self.name)
                t._classed -= e.prio != NORMAL  # an unread entry may have turned out classed
                out.deliveries.append(Delivery(decode(e.data, e.id), key, e.record, e))
            t._pending = keep
        return out

    def _fetch_by_priority(self, limit: int, out: Fetched) -> Fetched:
        """Fetch with classes waiting: each class its share, and a key's events strictly in order.

        Candidates are the leasable pending events in order (as in the plain
        walk). An event is taken only once every earlier candidate of its key
        was taken (in this fetch): priority moves keys ahead of other keys,
        never an event ahead of its own key's earlier ones.
        """
        t = self.t
        now = t.clock()
        skipped: set[str] = set()
        cands: list[_Entry] = []
        for item in t._pending:
            e = t._entries[item[1]]
            if e.key is None and not self._read(e):
                out.quarantined += 1
                continue
            key = e.key
            assert key is not None
            if key in skipped or key in self._failing:
                continue
            holder = t._holders.get(key)
            if (holder is not None and holder[0] != self.name) or e.record.not_before > now:
                skipped.add(key)
                out.deferred += 1
                continue
            cands.append(e)
        by_key: dict[str, list[_Entry]] = {}
        for e in cands:
            by_key.setdefault(e.key, []).append(e)  # type: ignore[arg-type]
        order: list[_Entry] = []
        left = limit
        while left > 0 and by_key:
            # Only each key's earliest untaken event may go: count those per class, split by shares.
            heads = [q[0] for q in by_key.values()]
            waiting = dict.fromkeys(PRIORITIES, 0)
            for e in heads:
                waiting[e.prio] += 1
            quota = split(left, waiting, t.shares)
            heads.sort(key=lambda e: (PRIORITIES.index(e.prio), e.sort))  # high first; one per key
            for e in heads:
                if quota[e.prio] > 0:
                    quota[e.prio] -= 1
                    left -= 1
                    order.append(e)
                    q = by_key[e.key]  # type: ignore[index]
                    q.pop(0)
                    if not q:
                        del by_key[e.key]  # type: ignore[arg-type]
        for e in order:
            key = e.key
            assert key is not None
            e.state, e.owner = State.INFLIGHT, self.name
            t._hold(key, self.name)
            t._classed -= e.prio != NORMAL
            out.deliveries.append(Delivery(decode(e.data, e.id), key, e.record, e))
        out.more = bool(by_key)
        t._pending = [item for item in t._pending if t._entries[item[1]].state is State.PENDING]
        return out

    def lease(self, event: Event) -> Delivery | None:
        """Lease ``event`` now, out of turn (inline dispatch), if per-key order allows; else None.

        Refused while an earlier event of its key is pending (published first,
        or waiting for a retry) or one is leased by any consumer, this one included.
        """
        t = self.t
        with t._lock:
            self._alive()
            e = t._entries.get(event.id)
            if e is None or e.state is not State.PENDING or e.key is None:
                return None
            key = e.key
            if key in self._failing or key in t._holders or e.record.not_before > t.clock():
                return None
            pos = bisect.bisect_left(t._pending, (e.sort, e.id))
            if any(t._entries[i].key == key for _, i in t._pending[:pos]):
                return None  # an earlier event of the key is pending (maybe waiting for its retry)
            del t._pending[pos]
            e.state, e.owner = State.INFLIGHT, self.name
            t._hold(key, self.name)
            t._classed -= e.prio != NORMAL
            return Delivery(decode(e.data, e.id), key, e.record, e)

    def _read(self, e: _Entry) -> bool:
        """Decode unread input: key it, or quarantine it (False)."""
        try:
            ev = decode(e.data, e.id)
            e.key = self.t.key_of(ev)
            e.prio = class_of(ev)
            self.t._classed += e.prio != NORMAL
            return True
        except InvalidData as exc:
            reason, _, detail = exc.message.partition(": ")
            e.state = State.CORRUPT
            e.info = {"reason": reason, "detail": detail, "from": "pending", "at": self.t.clock()}
            return False

    # -- recording ---------------------------------------------------------------------------
    def begin(self, delivery: Delivery) -> None:
        with self.t._lock:
            if self._mine(delivery) is not None:
                delivery.record.deliveries += 1

    def done(self, delivery: Delivery, handler: str) -> None:
        with self.t._lock:
            if self._mine(delivery) is not None:
                delivery.record.done.add(handler)

    def fail(self, delivery: Delivery, attempt: Attempt, not_before: float) -> None:
        with self.t._lock:
            if self._mine(delivery) is not None:
                delivery.record.failures.append(attempt)
                delivery.record.not_before = not_before
                self._failing[delivery.key] = delivery.id

    # -- outcomes ------------------------------------------------------------------------------
    def ack(self, delivery: Delivery) -> None:
        with self.t._lock:
            e = self._mine(delivery)
            if e is not None:
                e.state, e.owner = State.PROCESSED, None
                self._end(e, delivery.key)

    def dead(self, delivery: Delivery, reason: str, info: dict[str, Any]) -> None:
        with self.t._lock:
            e = self._mine(delivery)
            if e is not None:
                e.state, e.owner, e.info = State.DEAD, None, dict(info)
                self._end(e, delivery.key)

    def quarantine(self, delivery: Delivery, reason: str, detail: str) -> None:
        with self.t._lock:
            e = self._mine(delivery)
            if e is not None:
                e.state, e.owner = State.CORRUPT, None
                e.info = {"reason": reason, "detail": detail, "from": "inflight", "at": self.t.clock()}
                self._end(e, delivery.key)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self.t._lock:
            moved = False
            for d in deliveries:
                e = self._mine(d)
                if e is not None:
                    self._end(e, d.key)
                    self.t._to_pending(e)
                    moved = True
            if moved:
                self.t._wake_all()

    def sync(self) -> None:
        self._alive()

    def wait(self, timeout: float) -> None:
        self._wake.wait(max(0.0, timeout))
        self._wake.clear()

    def interrupt(self) -> None:
        self._wake.set()

    def close(self) -> None:
        t = self.t
        with t._lock:
            if self._closed or self._crashed:
                return
            mine = [e for e in t._entries.values() if e.state is State.INFLIGHT and e.owner == self.name]
            for e in sorted(mine, key=lambda e: e.sort):
                assert e.key is not None
                self._end(e, e.key)
                t._to_pending(e)
            self._closed = True
            t._consumers.pop(self.name, None)
            t._dead_consumers.add(self.name)  # a closed name is never reused
            if mine:
                t._wake_all()

    def crash(self) -> None:
        """Test hook: this consumer's process died. Its leases stay until another consumer recovers them."""
        with self.t._lock:
            self._crashed = True
            self.t._consumers.pop(self.name, None)
            self.t._dead_consumers.add(self.name)


__all__ = ["MemoryConsumer", "MemoryTransport", "decode", "sort_key"]
