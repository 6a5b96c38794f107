"""The backend seam: what the router, the daemon and the commands need from a backend.

Two roles, as in dramatiq (``Broker`` / ``Consumer``) and huey (``BaseStorage``):

* :class:`Transport` - one per process and backend: publishes groups of
  events, answers queries (by id, correlation, time, topic; counts) and
  prunes. It hands out a :class:`Consumer`.
* :class:`Consumer` - one per daemon: leases due events in key order
  (:meth:`Consumer.fetch`), records each delivery and each finished handler,
  and applies the daemon's outcomes (ack, fail, dead, quarantine, release).

The data path stays short: ``emit -> router -> Transport.publish``;
``daemon -> Consumer.fetch -> worker -> outcome -> Consumer.ack|fail|dead``.
Workers never call back into the daemon.

Every method's docstring states its guarantee. Words used throughout:

* **durable**: survives a crash of any process once the call returns; where a
  method is only durable against *process* death until :meth:`Consumer.sync`
  (page cache, a pipe to a helper), it says so.
* **leased**: handed to one consumer by :meth:`Consumer.fetch` and not yet
  acked, failed-and-released, dead-lettered, quarantined or released. A
  leased event is never handed to another consumer while its holder lives.
* **key**: the partition key (:mod:`poetctl.partition`). One key's events are
  handed out in order, to one consumer at a time.

Where each backend stands (details and the plan: ``notes/seam.md``):
``memory`` (:mod:`poetctl.backends.memory`) implements all of it in-process;
the filesystem spool will (``poetctl/backends/fs/``); NATS JetStream maps as
noted per method ("NATS:").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from .errors import InvalidData
from .event import Event

# State and Query live apart so the read-only commands select events without building this
# module's classes and protocols (start-up); they are part of this contract all the same.
from .selection import EVENT_STATES as EVENT_STATES
from .selection import Query as Query
from .selection import State as State
from .valueclass import FrozenError, ValueClass


class Quarantined(InvalidData):
    """Publishing an id that sits in quarantine: refused (65), nothing of the group is written.

    The one class for every backend; :mod:`poetctl.router` re-exports it.
    """


def quarantine_line(info: dict[str, Any] | None) -> str:
    """Why something is quarantined, from its ``{"reason", "detail"}``, as one printable line of at most 200
    characters (it goes into error messages on a terminal). The one formatting for every backend."""
    info = info or {}
    reason, detail = info.get("reason"), info.get("detail")
    text = f"{reason}: {detail}" if reason and detail else str(reason or detail or "reason unknown")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(text.split()))
    return text if len(text) <= 200 else text[:197] + "..."


# -- what a handler run leaves behind -----------------------------------------------------------


class Attempt(ValueClass):
    """One failed attempt of one handler (the on-disk shape of the spool's journal and ``.error``)."""

    # The classes of this contract are written out, not dataclasses (same constructor, repr and
    # equality): ``poetctl emit`` imports this module and dataclasses costs it more than its work.
    __slots__ = _fields = ("handler", "attempt", "at", "error", "traceback")

    def __init__(self, handler: str, attempt: int, at: float, error: str, traceback: str = "") -> None:
        self.handler = handler
        self.attempt = attempt
        self.at = at
        self.error = error
        self.traceback = traceback

    def to_dict(self) -> dict[str, Any]:
        return {
            "handler": self.handler,
            "attempt": self.attempt,
            "at": self.at,
            "error": self.error,
            "traceback": self.traceback,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attempt:
        return cls(str(d["handler"]), int(d["attempt"]), float(d["at"]), str(d["error"]), str(d.get("traceback", "")))


class Record(ValueClass):
    """What is known about an event's handling so far; it travels with the event.

    ``deliveries`` counts the deliveries that began (:meth:`Consumer.begin`).
    Every delivery that began ends in an ack, a failure, a dead letter or the
    death of its process, so deliveries not explained by a failure are deaths
    (:meth:`died`) and count as attempts.
    """

    __slots__ = _fields = ("done", "failures", "not_before", "deliveries")

    def __init__(
        self,
        done: set[str] | None = None,
        failures: list[Attempt] | None = None,
        not_before: float = 0.0,
        deliveries: int = 0,
    ) -> None:
        self.done: set[str] = set() if done is None else done
        self.failures: list[Attempt] = [] if failures is None else failures
        self.not_before = not_before
        self.deliveries = deliveries

    @property
    def attempts(self) -> int:
        return len(self.failures)

    def died(self) -> int:
        """Deliveries that began and ended without an outcome (call before the next :meth:`Consumer.begin`)."""
        return max(0, self.deliveries - len(self.failures))

    def attempts_of(self, handler: str, died: int = 0) -> int:
        """Failed attempts charged to ``handler``: its own failures plus the deaths (whose handler is unknown)."""
        return died + sum(1 for a in self.failures if a.handler == handler)

    def copy(self) -> Record:
        return Record(set(self.done), list(self.failures), self.not_before, self.deliveries)

    def merge(self, other: Record) -> None:
        """Fold ``other`` in; idempotent (a failure is identified by handler, attempt and time)."""
        self.done |= other.done
        seen = {(a.handler, a.attempt, a.at) for a in self.failures}
        self.failures += [a for a in other.failures if (a.handler, a.attempt, a.at) not in seen]
        self.failures.sort(key=lambda a: a.at)
        self.not_before = max(self.not_before, other.not_before)
        self.deliveries = max(self.deliveries, other.deliveries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": sorted(self.done),
            "failures": [a.to_dict() for a in self.failures],
            "not_before": self.not_before,
            "deliveries": self.deliveries,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            done=set(d.get("done", ())),
            failures=[Attempt.from_dict(a) for a in d.get("failures", ())],
            not_before=float(d.get("not_before", 0.0)),
            deliveries=int(d.get("deliveries", 0)),
        )


def dead_letter_info(
    event_id: str, reason: str, record: Record, at: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The one description of a dead letter (the spool's ``dead/<id>.error``, NATS's DLQ headers+body)."""
    last = record.failures[-1] if record.failures else None
    info: dict[str, Any] = {
        "id": event_id,
        "reason": reason,
        "dead_at": at,
        "attempts": record.attempts,
        "error": last.error if last else None,
        "handler": last.handler if last else None,
        "traceback": last.traceback if last else None,
        "history": [a.to_dict() for a in record.failures],
        "handlers_done": sorted(record.done),
    }
    if extra:
        info.update(extra)
    return info


# -- what crosses the seam ------------------------------------------------------------------------


class Outgoing(ValueClass):
    """One event to publish: the sealed event, its stored bytes, and whether its id was chosen.

    ``keyed`` ids (idempotency keys, derived ids of follow-ups) are checked for
    existence; fresh UUIDv7 ids (``keyed=False``) are the caller's promise of
    uniqueness, which a backend may trust without a lookup.
    """

    __slots__ = _fields = ("event", "data", "keyed")
    event: Event
    data: bytes
    keyed: bool

    def __init__(self, event: Event, data: bytes, keyed: bool) -> None:
        # Frozen, as the dataclass was: fields are set once, here, past __setattr__.
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "keyed", keyed)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:  # type: ignore[override]  # frozen: hashable over its fields, as the dataclass
        return hash(self._values())


class Delivery(ValueClass):
    """A leased event: what a worker needs, plus the backend's own handle.

    ``record`` is owned by the consumer: :meth:`Consumer.begin`, :meth:`Consumer.done`
    and :meth:`Consumer.fail` update it (and make it durable); nobody else writes it.
    """

    __slots__ = _fields = ("event", "key", "record", "handle")
    # Compared and hashed by identity (the dataclass had eq=False): a lease is one object.
    __eq__ = object.__eq__
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __init__(self, event: Event, key: str, record: Record, handle: Any = None) -> None:
        self.event = event
        self.key = key
        self.record = record
        self.handle = handle  # backend-private: a path and bucket (fs), a message (NATS), an entry (memory)

    @property
    def id(self) -> str:
        return self.event.id


class Fetched(ValueClass):
    """One :meth:`Consumer.fetch`: the new leases, and what the loop needs to pace itself."""

    __slots__ = _fields = ("deliveries", "quarantined", "deferred", "more", "recovered")

    def __init__(
        self,
        deliveries: list[Delivery] | None = None,
        quarantined: int = 0,
        deferred: int = 0,
        more: bool = False,
        recovered: int = 0,
    ) -> None:
        self.deliveries: list[Delivery] = [] if deliveries is None else deliveries
        self.quarantined = quarantined  # unreadable input moved to quarantine on the way
        self.deferred = deferred  # due later (retry time) or held by another consumer: fetch again later
        self.more = more  # stopped at ``limit`` with more due work: fetch again without waiting
        self.recovered = recovered  # dead consumers' events put back to pending during this fetch (rescan, takeover)


class Stored(ValueClass):
    """A query result: an event (None for quarantined input that is no event) and where it is."""

    __slots__ = _fields = ("id", "state", "event", "info")

    def __init__(self, id: str, state: State, event: Event | None, info: dict[str, Any] | None = None) -> None:
        self.id = id
        self.state = state
        self.event = event
        self.info = info  # dead letter description, or the quarantine reason


# -- the contract -------------------------------------------------------------------------------


@runtime_checkable
class Consumer(Protocol):
    """One daemon's side of a backend. Every method is thread-safe (workers call
    :meth:`begin` and :meth:`done`, and outcomes are applied on worker threads).

    Per-key order: a key's events are leased in order, to one consumer at a
    time; while a lease of a key is failing (between :meth:`fail` and that
    delivery's ack, dead letter or release), no later event of the key is leased.
    """

    name: str

    def recover(self) -> int:
        """Put the leases of provably dead consumers back to pending, with their records; the count moved.

        Records survive: finished handlers stay finished, failures and
        deliveries keep counting (a death is an attempt: see :meth:`begin`).
        Idempotent; safe when several live consumers recover at once (each
        event moves once). The loop calls it at start; after that a live
        consumer's :meth:`fetch` takes a dead one's work over by itself, before
        leasing any later event of its keys (fs: at the next rescan or bucket
        takeover; NATS: after AckWait; memory: at the next fetch).
        fs: a dead owner's ``inflight/<owner>/`` back to pending under its owner
        lock, its journal turned into ``records/``. NATS: nothing to do - the
        server redelivers after AckWait; records live in a KV bucket.
        """
        ...

    def fetch(self, limit: int) -> Fetched:
        """Lease up to ``limit`` due events, in key order; never blocks.

        Due: its record's ``not_before`` has passed (injected clock) and no
        earlier event of its key waits (behind a retry, in pending, or leased by
        another consumer). Events of one key come in publish order (UUIDv7 and
        derived ids: id order, so a follow-up sorts at its cause's time).
        Unreadable input is quarantined on the way (counted, never returned) and
        never blocks what follows. Leases are made before return; many per call
        (the loop asks for hundreds): a backend may prepare the next batch ahead
        (fs: the mover child renames batch k+1 while batch k is handled).
        A dead consumer's work taken over on the way is counted in
        ``Fetched.recovered`` (the loop reports it to ``on_recover``).
        fs: window listing, read+verify, bucket flock, claim rename (pipelined
        through the mover). NATS: pull ``fetch(batch)`` on this daemon's
        partition consumers; redeliveries carry their record from KV.
        """
        ...

    def begin(self, delivery: Delivery) -> None:
        """Record that handlers are about to run for ``delivery``: ``record.deliveries += 1``.

        Durable against process death before return (not against power loss
        until :meth:`sync`), so a process that dies inside a handler has used
        an attempt: the next delivery sees it in :meth:`Record.died`.
        fs: one journal line (a single ``write``). NATS: implicit - the
        message's ``num_delivered``; nothing to write.
        """
        ...

    def done(self, delivery: Delivery, handler: str) -> None:
        """Record that ``handler`` finished for ``delivery`` (effectively-once: a redelivery skips it).

        Same durability as :meth:`begin`. The last handler needs no call: :meth:`ack` records it.
        fs: a ``D`` journal line. NATS: KV ``put(<id>.done.<handler>)``.
        """
        ...

    def ack(self, delivery: Delivery) -> None:
        """The event is processed: the lease ends, its record is dropped.

        Durable against process death on return; durable against power loss
        after :meth:`sync` (until then a power loss may redeliver it, whose
        finished handlers are skipped - never lost). A lease already lost
        (recovered by another consumer) makes this a no-op.
        fs: the mover's ``D <name>`` pipe write (or a rename into processed/).
        NATS: ``msg.ack()`` (``double_ack`` on sync), KV record purged.
        """
        ...

    def fail(self, delivery: Delivery, attempt: Attempt, not_before: float) -> None:
        """Record a failed attempt and when the next one is due; the lease is KEPT.

        Appends ``attempt`` to the record and sets ``not_before``, durable like
        :meth:`begin`. The caller retries the delivery itself at ``not_before``
        (:meth:`begin` again) or releases it; until then the key is blocked:
        no later event of it is leased, to this consumer or another.
        fs: an ``F`` journal line; the file stays in ``inflight/<owner>/``.
        NATS: KV put of the record and ``msg.in_progress()`` to keep the lease
        (a ``nak(delay)`` could be redelivered to another consumer, and the
        key's later events would overtake it).
        """
        ...

    def dead(self, delivery: Delivery, reason: str, info: dict[str, Any]) -> None:
        """Move the event to the dead letters with ``info`` (:func:`dead_letter_info`). Durable on return.

        The lease ends and the key is unblocked. fs: ``dead/<id>.error`` then
        the rename into ``dead/``, fsync. NATS: publish to the DLQ stream
        (``Nats-Msg-Id`` = id, so a repeat is deduplicated), then ``msg.term()``.
        """
        ...

    def quarantine(self, delivery: Delivery, reason: str, detail: str) -> None:
        """Move a leased event to quarantine (kept, never deleted, never handled). Durable on return.

        For what :meth:`fetch` could read but the loop finds bad; input that
        cannot even be read is quarantined inside :meth:`fetch`. Publishing
        its id later raises :class:`Quarantined`. fs: ``corrupt/`` plus
        ``.reason``. NATS: publish to the corrupt stream, ``msg.term()``.
        """
        ...

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand leases back (shutdown): pending again with their records, in order; not an attempt.

        Durable on return. The next consumer skips finished handlers, keeps
        counting attempts and honours ``not_before``. fs: records saved, renames
        back to pending, fsync. NATS: ``nak(delay=not_before - now)``.
        """
        ...

    def sync(self) -> None:
        """Make every begin/done/ack/fail so far durable against power loss (a batched fsync)."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until new events may be due, :meth:`interrupt`, or ``timeout`` real seconds.

        A wake-up is a hint, never the truth: the loop fetches after it either
        way. fs: the watchdog event. NATS: a long-poll pull. memory: a condition.
        """
        ...

    def interrupt(self) -> None:
        """Wake a :meth:`wait` now (any thread; a signal handler may call it)."""
        ...

    def close(self) -> None:
        """Release every remaining lease (as :meth:`release`), sync, free resources. Idempotent."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A backend as the router and the commands see it. Thread-safe."""

    def publish(self, items: Sequence[Outgoing]) -> list[bool]:
        """Publish a group durably; per item, True if added, False if its id existed.

        * Durable before return: the group survives any crash once this returns.
        * Ids: an id that exists in any state is a no-op (False), also twice in
          one group (the first wins); an id in quarantine raises
          :class:`Quarantined` and nothing of the group is written.
        * Failure raises (:class:`~poetctl.errors.SpoolIOError`,
          :class:`~poetctl.errors.BackendUnavailable`). fs and memory: nothing
          of the group is visible. NATS: some items may be published; since
          publishing again with the same ids (``keyed=True``) is a no-op, the
          caller retries the whole group.
        * Concurrent callers may share one commit (the spool's group commit).
        fs: tmp files, fsync, rename/link into pending, one directory fsync.
        NATS: ``js.publish`` with ``Nats-Msg-Id`` = id (dedup window) to the
        subject of the event's partition, after a KV check for ids older than
        the window and for quarantined ids.
        """
        ...

    def consumer(self, name: str | None = None) -> Consumer:
        """A consumer for one daemon (``name``: a stable identity; default: this process)."""
        ...

    def state_of(self, event_id: str) -> State | None:
        """Where ``event_id`` is now, or None if unknown (also after prune). Checked in flow order,
        so an event moving forward concurrently is still found."""
        ...

    def get(self, event_id: str) -> Stored | None:
        """The event with its state (and dead letter or quarantine info), or None."""
        ...

    def select(self, query: Query, limit: int | None = None) -> Iterator[Stored]:
        """Events matching ``query`` in ``query.states``, newest first, at most ``limit``.

        Never fails on one damaged event (it is skipped). fs: listings and the
        index. NATS: stream ``get_msg``/ordered consumer by subject and start time.
        """
        ...

    def counts(self) -> dict[State, int]:
        """How many events per state (every :class:`State`; 0 when none)."""
        ...

    def prune(self, before: float, states: Sequence[State] = (State.PROCESSED,)) -> int:
        """Delete events of ``states`` whose timestamp is older than ``before``; how many.

        Dead events go only when named. Never touches pending or leased
        events, nor quarantined input (kept for an operator, never deleted):
        those states are refused with ValueError. Idempotent.
        NATS: stream ``max_age`` does it; this purges by subject and sequence.
        """
        ...

    def close(self) -> None:
        """Free resources (consumers are closed by their owners). Idempotent."""
        ...


__all__ = [
    "EVENT_STATES",
    "Attempt",
    "Consumer",
    "Delivery",
    "Fetched",
    "Outgoing",
    "Quarantined",
    "Query",
    "Record",
    "State",
    "Stored",
    "Transport",
    "dead_letter_info",
    "quarantine_line",
]
