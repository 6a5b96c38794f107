"""Which events a reader wants (:class:`Query`) and where an event is (:class:`State`).

Part of the backend seam (:mod:`poetctl.transport` re-exports both); kept in a
module of its own so ``tail``, ``correlate`` and ``status`` select events
without importing the whole contract (its dataclasses and runtime-checkable
protocols cost a short command's start-up), nor dataclasses at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from fnmatch import fnmatchcase

from .topics import matches

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .event import Event


class State(StrEnum):
    """Where an event is. A transport answers these for every id it knows."""

    PENDING = "pending"  # published, waiting for a consumer (maybe for its retry time)
    INFLIGHT = "inflight"  # leased by a consumer (maybe parked until its retry time)
    PROCESSED = "processed"  # every handler finished (or none subscribed)
    DEAD = "dead"  # attempts exhausted, Permanent, expired or the daemon died too often
    CORRUPT = "corrupt"  # quarantined input: kept, never handled, never deleted


EVENT_STATES = (State.PENDING, State.INFLIGHT, State.PROCESSED, State.DEAD)


_QUERY_FIELDS = ("ids", "types", "topics", "correlation_id", "source", "since", "until", "states")


class Query:
    """Which events: every given criterion holds (AND); sequences are ORs.

    ``topics`` are topic patterns (``poet/functions/*``), ``types`` globs over
    types; ``since``/``until`` bound the event's ``timestamp`` (until exclusive).
    Written out rather than a dataclass (same constructor, repr and equality):
    the read-only commands start without importing dataclasses.
    """

    __slots__ = _QUERY_FIELDS
    __hash__ = None  # type: ignore[assignment]  # compared by value, mutable (as the dataclass was)

    def __init__(
        self,
        ids: Sequence[str] = (),
        types: Sequence[str] = (),
        topics: Sequence[str] = (),
        correlation_id: str | None = None,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        states: Sequence[State] = EVENT_STATES,
    ) -> None:
        self.ids = ids
        self.types = types
        self.topics = topics
        self.correlation_id = correlation_id
        self.source = source
        self.since = since
        self.until = until
        self.states = states

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return tuple(getattr(self, f) for f in _QUERY_FIELDS) == tuple(getattr(other, f) for f in _QUERY_FIELDS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in _QUERY_FIELDS)
        return f"{self.__class__.__qualname__}({inner})"

    def time_ok(self, ts: float) -> bool:
        """``since <= ts < until`` (each bound only when given)."""
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def match_meta(self, type_: str, topic: str, source: str, correlation_id: str | None, ts: float) -> bool:
        """Every criterion but ``ids``, on an event's fields (the spool's index rows carry just these)."""
        if not self.time_ok(ts):
            return False
        if self.types and not any(fnmatchcase(type_, t) for t in self.types):
            return False
        if self.topics and not any(matches(p, topic) for p in self.topics):
            return False
        if self.correlation_id is not None and correlation_id != self.correlation_id:
            return False
        return self.source is None or source == self.source

    def match(self, e: Event) -> bool:
        """Every criterion (``states`` aside: where the event is, is the backend's to say)."""
        if self.ids and e.id not in self.ids:
            return False
        return self.match_meta(e.type, e.topic, e.source, e.correlation_id, e.timestamp)
