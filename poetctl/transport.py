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

from .errors import InvalidData
from .event import Event

# State and Query live apart so the read-only commands select events without building this
# module's classes and protocols (start-up); they are part of this contract all the same.
from .selection import EVENT_STATES as EVENT_STATES
from .selection import Query as Query
from .selection import State as State
from .valueclass import FrozenError, ValueClass

# The two protocols live in poetctl.contract: they need typing at run time, which a one-event
# emit (it uses only the classes here) should not import. They are still importable from here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .contract import Consumer as Consumer
    from .contract import Transport as Transport
else:

    def __getattr__(name: str) -> object:
        if name in ("Consumer", "Transport"):
            from . import contract

            return getattr(contract, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
