"""EventRouter: the library's front door (``emit``, ``emit_many``, ``subscribe``).

Usage, with the seed's names::

    from poetctl import EventRouter
    router = EventRouter(spool=".poet/pubsub")
    event_id = router.emit("drift.detected", {...}, source="poet.generator")

``emit`` validates, seals (checksum) and durably commits before it returns:
once it returns, the event survives a crash of any process. Inside a handler
run by the daemon, ``emit`` links the new event to its cause (causation_id,
inherited correlation_id) and derives its id from the cause, the handler and
the call's position, so re-running the handler deduplicates its follow-ups.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Config, load_config
from .errors import InvalidData
from .event import Event, check_depth, check_id, check_type, compute_checksum, now, verify_checksum
from .ids import derived_id, uuid7
from .schemas import SchemaRegistry
from .spool.layout import SpoolLayout
from .spool.writer import GroupCommitter
from .topics import ROUTES, check_subscription, topic_for

Handler = Callable[[Event], Any]
EmitItem = tuple[str, Mapping[str, Any]] | Mapping[str, Any] | Event


@dataclass(slots=True)
class Subscription:
    """A handler registered for a type or a glob of types (``drift.*``)."""

    pattern: str
    fn: Handler
    name: str


@dataclass(slots=True)
class _Cause:
    event: Event
    handler: str
    position: int = 0
    # Follow-ups are buffered here and committed only if the handler succeeds.
    buffer: list[tuple[Event, bool]] | None = None


class EventRouter:
    """Emits events into a spool and holds the subscriptions the daemon runs.

    ``spool`` overrides the configured location; ``config`` defaults to
    :func:`poetctl.config.load_config`. The spool tree is created on first emit.
    """

    def __init__(
        self,
        spool: str | os.PathLike[str] | None = None,
        *,
        config: Config | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.config = config if config is not None else load_config(spool=spool)
        if spool is not None and config is not None:
            self.config.spool = type(self.config.spool)(spool)
        self.layout = SpoolLayout(self.config.spool)
        self.registry = registry if registry is not None else SchemaRegistry(self.config.schema_paths)
        self.subscriptions: list[Subscription] = []
        self._ready = False
        self._init_lock = threading.Lock()
        self._local = threading.local()
        # Emits from several threads share one durability flush (see GroupCommitter).
        self.committer = GroupCommitter(self.layout, self.layout.pending)

    # -- subscriptions ------------------------------------------------------
    def subscribe(self, pattern: str, fn: Handler, *, name: str | None = None) -> None:
        """Run ``fn(event)`` for every event whose type matches ``pattern`` (a type or glob).

        ``name`` identifies the handler in completion records and derived ids;
        it defaults to ``module.qualname`` and must be stable across restarts.
        Raises :class:`~poetctl.errors.UsageError` for a pattern that can never
        match a type or an unsafe name (see :func:`poetctl.topics.check_subscription`).
        """
        hname = name
        if hname is None:
            hname = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        check_subscription(pattern, hname)
        self.subscriptions.append(Subscription(pattern, fn, hname))

    # -- cause context (used by the daemon) ---------------------------------
    def _cause(self) -> _Cause | None:
        return self._local.__dict__.get("cause")

    def set_cause(self, event: Event | None, handler: str = "", buffer: list[tuple[Event, bool]] | None = None) -> None:
        """Make emits on this thread follow-ups of ``event`` by ``handler`` (None clears).

        With ``buffer``, :meth:`emit` appends the built event there instead of
        committing it; the daemon commits the buffer after the handler returns
        (a failed handler's follow-ups are dropped, and re-emitted on retry).
        """
        self._local.cause = _Cause(event, handler, 0, buffer) if event is not None else None

    # -- building -----------------------------------------------------------
    def build(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        source: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        id: str | None = None,
        environment: str | None = None,
        expires_at: float | None = None,
        where: str | None = None,
    ) -> tuple[Event, bool]:
        """Validate and seal a new event. Returns ``(event, keyed)``; keyed = caller chose the id."""
        check_type(event_type, where)
        if not isinstance(payload, Mapping):
            raise InvalidData(f"$.payload: expected a JSON object, got {type(payload).__name__}", where=where)
        payload = dict(payload)
        check_depth(payload, where)
        self._check_payload(event_type, payload, where)
        cause = self._cause()
        keyed = id is not None
        if cause is not None:
            causation_id = causation_id or cause.event.id
            if correlation_id is None:
                correlation_id = cause.event.correlation_id
            if id is None:
                id = derived_id(cause.event.id, cause.event.timestamp, cause.handler, cause.position)
                keyed = True
            cause.position += 1
        if id is not None:
            check_id(id, where)
        cfg = self.config
        ev = Event(
            id=id if id is not None else uuid7(),
            type=event_type,
            source=source or cfg.source,
            timestamp=now(),
            topic=self._topic(event_type, payload),
            payload=payload,
            metadata={
                "version": cfg.schema_version,
                "environment": environment or cfg.environment,
                "service": cfg.service,
            },
            correlation_id=correlation_id,
            causation_id=causation_id,
            expires_at=expires_at,
        )
        d = ev.to_dict(with_checksum=False)
        ev.checksum = d["checksum"] = compute_checksum(d)
        self.registry.check_envelope(d, where)
        return ev, keyed

    def _check_payload(self, event_type: str, payload: Mapping[str, Any], where: str | None) -> None:
        if self.config.validation:
            self.registry.validate_payload(event_type, payload, where, prefix="$.payload")
        else:
            self.registry.check_known(event_type, where)

    def _topic(self, event_type: str, payload: Mapping[str, Any]) -> str:
        template = None if event_type in ROUTES else self.registry.topic_template(event_type)
        return topic_for(event_type, payload, template)

    def ingest(self, envelope: Mapping[str, Any], where: str | None = None) -> tuple[Event, bool]:
        """Turn a whole or partial envelope into a sealed event.

        With a ``checksum`` the envelope must be whole and is verified as is
        (this is how ``tail --output jsonl`` output is re-emitted). Without
        one, missing ``id``, ``source``, ``timestamp``, ``topic`` and
        ``metadata`` are filled in like :meth:`build` does.
        """
        if not isinstance(envelope, Mapping):
            raise InvalidData("expected a JSON object (an event envelope)", where=where)
        d = dict(envelope)
        if "checksum" not in d:
            ev, keyed = self.build(
                d.get("type"),  # type: ignore[arg-type]
                d.get("payload"),  # type: ignore[arg-type]
                source=d.get("source"),
                correlation_id=d.get("correlation_id"),
                causation_id=d.get("causation_id"),
                id=d.get("id"),
                expires_at=d.get("expires_at"),
                where=where,
            )
            if "timestamp" in d or "metadata" in d or "topic" in d:
                ev.timestamp = d.get("timestamp", ev.timestamp)
                ev.metadata = d.get("metadata", ev.metadata)
                ev.topic = d.get("topic", ev.topic)
                ev.seal()
                self.registry.check_envelope(ev.to_dict(), where)
                self._check_topic(ev, where)
            return ev, keyed
        self.registry.check_envelope(d, where)
        verify_checksum(d, where)
        check_depth(d["payload"], where)
        self._check_payload(d["type"], d["payload"], where)
        ev = Event.from_dict(d)
        self._check_topic(ev, where)
        return ev, True

    def _check_topic(self, ev: Event, where: str | None) -> None:
        expected = self._topic(ev.type, ev.payload)
        if ev.topic != expected:
            raise InvalidData(
                f"$.topic: {ev.topic!r} does not match the routing table; expected {expected!r} for a {ev.type} event",
                where=where,
            )

    def _coerce(self, item: EmitItem, where: str | None) -> tuple[Event, bool]:
        if isinstance(item, Event):
            d = item.to_dict(with_checksum=item.checksum is not None)
            return self.ingest(d, where)
        if isinstance(item, tuple):
            if len(item) != 2:
                raise InvalidData("expected a (type, payload) pair", where=where)
            return self.build(item[0], item[1], where=where)
        return self.ingest(item, where)

    # -- emitting -----------------------------------------------------------
    def _ensure(self) -> None:
        if not self._ready:
            with self._init_lock:
                if not self._ready:
                    self.layout.init()
                    self._ready = True

    def emit(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        source: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        id: str | None = None,
        environment: str | None = None,
        expires_at: float | None = None,
        where: str | None = None,
    ) -> str:
        """Validate, seal and durably commit one event; return its id.

        ``where`` names the input in error messages (a file name, a line).
        Safe to call from several threads: concurrent emits share the
        publish step and its directory fsync (group commit, see
        :class:`poetctl.spool.writer.GroupCommitter`); each returns once its
        own event is durable.

        Emitting an id that already exists anywhere in the spool is a no-op
        that returns the id. Raises :class:`InvalidData` (65) for bad input
        and :class:`SpoolIOError` (74) when the spool cannot be written; in
        both cases nothing is written.
        """
        ev, keyed = self.build(
            event_type,
            payload,
            source=source,
            correlation_id=correlation_id,
            causation_id=causation_id,
            id=id,
            environment=environment,
            expires_at=expires_at,
            where=where,
        )
        cause = self._cause()
        if cause is not None and cause.buffer is not None:
            cause.buffer.append((ev, keyed))
            return ev.id
        self.commit_events([(ev, keyed)])
        return ev.id

    def emit_many(self, items: Iterable[EmitItem]) -> list[str]:
        """Validate every item, then commit them all as one group; return the ids in order.

        Items are ``(type, payload)`` pairs, envelope dicts (see :meth:`ingest`)
        or :class:`Event` objects. If any item is invalid nothing is written.
        """
        built = [self._coerce(item, f"item {i + 1}") for i, item in enumerate(items)]
        self.commit_events(built)
        return [ev.id for ev, _ in built]

    def commit_events(self, built: list[tuple[Event, bool]]) -> list[bool]:
        """Commit already-validated events as one group; True per event actually added.

        Commits running concurrently in other threads of this process may be
        published as one group; if that fails, each of them raises
        :class:`SpoolIOError` and none of their events is visible.
        """
        if not built:
            return []
        self._ensure()
        limit = self.config.max_event_bytes
        items = []
        seen: set[str] = set()
        for ev, keyed in built:
            data = ev.to_json() + b"\n"
            if len(data) > limit:
                raise InvalidData(f"event {ev.id} is {len(data)} bytes; the limit is {limit} bytes (max_event_bytes)")
            # Two items with one id in the same batch: the first wins, like a re-emit.
            items.append((ev.id, data, keyed or ev.id in seen))
            seen.add(ev.id)
        return self.committer.commit(items)
