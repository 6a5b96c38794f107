"""The memory backend's consumer: fetch by priority, leases, outcomes, crash, recovery (see the package doc)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import InvalidData
from ...event import Event
from ...priority import NORMAL, PRIORITIES, class_of, split
from ...transport import (
    Attempt,
    Delivery,
    Fetched,
    State,
)
from .entries import Entry, decode, sort_key

if TYPE_CHECKING:
    from .transport import MemoryTransport


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

    def _mine(self, d: Delivery) -> Entry | None:
        """The delivery's entry if it is still leased to this consumer (else the lease was lost)."""
        self._alive()
        e: Entry = d.handle
        return e if e.state is State.INFLIGHT and e.owner == self.name else None

    def _end(self, e: Entry, key: str) -> None:
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
        cands: list[Entry] = []
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
        by_key: dict[str, list[Entry]] = {}
        for e in cands:
            by_key.setdefault(e.key, []).append(e)  # type: ignore[arg-type]
        order: list[Entry] = []
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

    def _read(self, e: Entry) -> bool:
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
