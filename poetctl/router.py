"""EventRouter: the library's front door (``emit``, ``emit_many``, ``subscribe``).

Usage, with the seed's names::

    from poetctl import EventRouter
    router = EventRouter(spool=".poet/pubsub")
    event_id = router.emit("drift.detected", {...}, source="poet.generator")

``emit`` validates, seals (checksum) and durably commits before it returns:
once it returns, the event survives a crash of any process. Inside a handler
run by the daemon, ``emit`` links the new event to its cause (causation_id,
inherited correlation_id, ``causation_depth`` one more than the cause's) and
derives its id from the cause, the handler and the call's position, so
re-running the handler deduplicates its follow-ups. A follow-up deeper than
``max_causation_depth`` is refused (:class:`CausationDepthExceeded`): a
handler that emits what it subscribes to stops there instead of looping.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .backends.fs.corrupt_names import REASON_SUFFIX
from .backends.fs.layout import SpoolLayout
from .backends.fs.writer import GroupCommitter
from .config import DEFAULT_MAX_CAUSATION_DEPTH, Config, load_config
from .errors import InvalidData
from .event import Event, canonical, check_depth, check_id, check_type, compute_checksum, now, verify_checksum
from .ids import derived_id, uuid7
from .schemas import MAX_CAUSATION_DEPTH, SchemaRegistry
from .topics import ROUTES, check_subscription, topic_for

if TYPE_CHECKING:
    from .upcasting import Upcasters

Handler = Callable[[Event], Any]
EmitItem = tuple[str, Mapping[str, Any]] | Mapping[str, Any] | Event


class CausationDepthExceeded(InvalidData):
    """A handler's follow-up would be deeper in its causal chain than ``max_causation_depth`` allows."""


class Quarantined(InvalidData):
    """An event with this id exists in ``corrupt/``: emitting it again would silently do nothing."""


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
    :func:`poetctl.config.load_config`. With ``create_spool`` (the default,
    the seed's behaviour) the spool tree is created on first emit, so a
    library user needs no ``poetctl init``; with ``create_spool=False`` (what
    the ``emit`` command uses) emitting into a path that holds no spool
    raises :class:`poetctl.errors.InputMissing` (66) and creates nothing.
    """

    def __init__(
        self,
        spool: str | os.PathLike[str] | None = None,
        *,
        config: Config | None = None,
        registry: SchemaRegistry | None = None,
        create_spool: bool = True,
    ) -> None:
        self.config = config if config is not None else load_config(spool=spool)
        if spool is not None and config is not None:
            self.config.spool = type(self.config.spool)(spool)
        self.layout = SpoolLayout(self.config.spool)
        self.registry = registry if registry is not None else SchemaRegistry(self.config.schema_paths)
        self.subscriptions: list[Subscription] = []
        self.upcasters: Upcasters | None = None  # created by the first upcast() (see poetctl.upcasting)
        self.create_spool = create_spool
        # The daemon sets this from its options; the config's [daemon] value otherwise.
        self.max_causation_depth = _depth_limit(self.config)
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

    def upcast(self, event_type: str, from_version: int, to_version: int, fn: Callable[[dict[str, Any]], Any]) -> None:
        """Register ``fn(payload) -> payload`` taking ``event_type`` from one schema version to a later one.

        Handlers then receive old events at the newest version; see :mod:`poetctl.upcasting`.
        """
        from .upcasting import Upcasters

        if self.upcasters is None:
            self.upcasters = Upcasters(self.registry)
        self.upcasters.register(event_type, from_version, to_version, fn)

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
        causation_depth: int | None = None,
        where: str | None = None,
        schema_version: int | None = None,
    ) -> tuple[Event, bool]:
        """Validate and seal a new event. Returns ``(event, keyed)``; keyed = caller chose the id.

        Inside a handler (see :meth:`set_cause`) ``causation_depth`` is the
        cause's + 1, whatever was passed, and past :attr:`max_causation_depth`
        raises :class:`CausationDepthExceeded` before anything else is done.
        """
        cause = self._cause()
        if cause is not None:
            causation_depth = self._follow_up_depth(cause, event_type, where)
        check_type(event_type, where)
        if not isinstance(payload, Mapping):
            raise InvalidData(f"$.payload: expected a JSON object, got {type(payload).__name__}", where=where)
        payload = dict(payload)
        check_depth(payload, where, "$.payload")
        schema_version = self._check_payload(event_type, payload, where, schema_version)
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
                "schema_version": schema_version,  # newest unless the caller chose one
            },
            correlation_id=correlation_id,
            causation_id=causation_id,
            expires_at=expires_at,
            # 0 is stored as absent; anything else (a bad value from an envelope too) goes to the schema check.
            causation_depth=None if type(causation_depth) is int and causation_depth == 0 else causation_depth,
        )
        d = ev.to_dict(with_checksum=False)
        ev.checksum = d["checksum"] = compute_checksum(d)
        self.registry.check_envelope(d, where)
        return ev, keyed

    def _follow_up_depth(self, cause: _Cause, event_type: object, where: str | None) -> int:
        depth = int(cause.event.causation_depth or 0) + 1
        limit = self.max_causation_depth
        if depth > limit:
            raise CausationDepthExceeded(
                f"follow-up {event_type!r} of event {cause.event.id} ({cause.event.type}) by handler "
                f"{cause.handler!r} would be at causation depth {depth}, past the limit of {limit} "
                "([daemon] max_causation_depth): a handler loop? The follow-up was not emitted",
                where=where,
            )
        return depth

    def _check_payload(
        self, event_type: str, payload: Mapping[str, Any], where: str | None, version: int | None = None
    ) -> int:
        """Check ``payload`` against its schema (``version``, the newest when None); the version used."""
        version = self.registry.newest(event_type, where) if version is None else version
        if self.config.validation:
            self.registry.validate_payload(event_type, payload, where, prefix="$.payload", version=version)
        else:
            self.registry.check_known(event_type, where, version)
        return version

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
                causation_depth=d.get("causation_depth"),
                where=where,
                schema_version=_declared_version(d),
            )
            if "timestamp" in d or "metadata" in d or "topic" in d:
                ev.timestamp = d.get("timestamp", ev.timestamp)
                ev.metadata = _with_version(d.get("metadata", ev.metadata), ev.metadata)
                ev.topic = d.get("topic", ev.topic)
                ev.seal()
                self.registry.check_envelope(ev.to_dict(), where)
                self._check_topic(ev, where)
            return ev, keyed
        self.registry.check_envelope(d, where)
        verify_checksum(d, where)
        check_depth(d["payload"], where, "$.payload")
        self._check_payload(d["type"], d["payload"], where, _declared_version(d) or 1)  # absent: before versions
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
                    if self.create_spool:
                        self.layout.init()
                    else:
                        lay = self.layout
                        lay.require_real(lay.events, lay.tmp, lay.pending)
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
        schema_version: int | None = None,
    ) -> str:
        """Validate, seal and durably commit one event; return its id.

        ``where`` names the input in error messages (a file name, a line).
        ``schema_version`` picks the payload schema version (default: the newest).
        Safe to call from several threads: concurrent emits share the
        publish step and its directory fsync (group commit, see
        :class:`poetctl.backends.fs.writer.GroupCommitter`); each returns once its
        own event is durable.

        Emitting an id that already exists in the spool (pending, in flight,
        processed or dead-lettered) is a no-op that returns the id. An id that
        exists in ``corrupt/`` raises :class:`Quarantined` (65): the earlier
        event was never handled, so doing nothing would lose this one.
        Raises :class:`InvalidData` (65) for bad input and
        :class:`SpoolIOError` (74) when the spool cannot be written; in all
        these cases nothing is written.
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
            schema_version=schema_version,
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
        or :class:`Event` objects. If any item is invalid nothing is written;
        two items with one id are one event if their content is the same
        (see :func:`same_content`) and invalid otherwise. Inside a handler the
        items are follow-ups, buffered like :meth:`emit`'s.
        """
        built = [self._coerce(item, f"item {i + 1}") for i, item in enumerate(items)]
        check_duplicates(built, lambda i: f"item {i + 1}")
        cause = self._cause()
        if cause is not None and cause.buffer is not None:
            cause.buffer.extend(built)
        else:
            self.commit_events(built)
        return [ev.id for ev, _ in built]

    def commit_events(self, built: list[tuple[Event, bool]]) -> list[bool]:
        """Commit already-validated events as one group; True per event actually added.

        Commits running concurrently in other threads of this process may be
        published as one group; if that fails, each of them raises
        :class:`SpoolIOError` and none of their events is visible. An id found
        in ``corrupt/`` raises :class:`Quarantined` after the publish (the
        group's other events are committed).
        """
        return self.commit_found(built)[0]

    def commit_found(self, built: list[tuple[Event, bool]]) -> tuple[list[bool], dict[int, Path]]:
        """:meth:`commit_events`, also returning where each no-op event's id was found (index -> path)."""
        if not built:
            return [], {}
        self._ensure()
        limit = self.config.max_event_bytes
        items = []
        seen: set[str] = set()
        for ev, keyed in built:
            data = ev.to_json() + b"\n"
            if len(data) > limit:
                raise InvalidData(f"event {ev.id} is {len(data)} bytes; the limit is {limit} bytes (max_event_bytes)")
            # Two items with one id in the same batch: the first wins, like a re-emit
            # (callers that take input refuse such pairs with different content first).
            items.append((ev.id, data, keyed or ev.id in seen))
            seen.add(ev.id)
        added, existing = self.committer.commit_found(items)
        for i, path in existing.items():
            if path.parent == self.layout.corrupt:
                raise Quarantined(quarantined_message(self.layout, built[i][0].id))
        return added, existing

    def quarantine_reason(self, event_id: str) -> str | None:
        """Why ``corrupt/<event_id>.json`` was quarantined, or None if there is no such file."""
        return quarantine_reason(self.layout, event_id)


def _declared_version(d: Mapping[str, Any]) -> int | None:
    """``metadata.schema_version`` of an envelope (None if absent; the envelope schema checks its type)."""
    m = d.get("metadata")
    v = m.get("schema_version") if isinstance(m, Mapping) else None
    return v if type(v) is int else None


def _with_version(metadata: Any, built: dict[str, Any]) -> Any:
    """Given metadata, plus the schema version the payload was validated against when it names none."""
    if isinstance(metadata, dict) and "schema_version" not in metadata:
        return {**metadata, "schema_version": built["schema_version"]}
    return metadata


def _depth_limit(config: Config) -> int:
    value = config.daemon.get("max_causation_depth", DEFAULT_MAX_CAUSATION_DEPTH)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CAUSATION_DEPTH:
        where = f"{config.file}: [daemon] max_causation_depth" if config.file else "[daemon] max_causation_depth"
        raise InvalidData(f"expected an integer from 0 to {MAX_CAUSATION_DEPTH}, got {value!r}", where=where)
    return value


def same_content(a: Event, b: Event) -> bool:
    """True if two events with one id are the same event: equal apart from when each was stamped.

    ``timestamp`` (and so ``checksum``) differ between two builds of one input,
    so they are left out; everything else must match.
    """
    da, db = a.to_dict(with_checksum=False), b.to_dict(with_checksum=False)
    da.pop("timestamp", None)
    db.pop("timestamp", None)
    return canonical(da) == canonical(db)


def check_duplicates(built: list[tuple[Event, bool]], name: Callable[[int], str]) -> None:
    """Raise :class:`InvalidData` if two of ``built`` share an id but not their content.

    ``name(i)`` names item ``i`` in the message (``FILE:LINE``, ``item 3``).
    """
    first: dict[str, int] = {}
    for i, (ev, _) in enumerate(built):
        j = first.setdefault(ev.id, i)
        if j != i and not same_content(built[j][0], ev):
            raise InvalidData(
                f"id {ev.id!r} was already used by {name(j)} for different content; "
                "one id is one event (give this one another id, or make the two identical)",
                where=name(i),
            )


def quarantine_reason(layout: SpoolLayout, event_id: str) -> str | None:
    """The ``reason`` (and detail) of ``corrupt/<event_id>.json``, or None if there is no such file."""
    name = event_id + ".json"
    path = layout.corrupt / name
    if not os.path.lexists(path):
        return None
    try:
        fd = os.open(layout.corrupt / (name + REASON_SUFFIX), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = orjson.loads(os.read(fd, 65536))
        finally:
            os.close(fd)
    except (OSError, orjson.JSONDecodeError):
        return "reason unknown"
    if not isinstance(info, dict):
        return "reason unknown"
    reason, detail = info.get("reason"), info.get("detail")
    text = f"{reason}: {detail}" if reason and detail else str(reason or detail or "reason unknown")
    # One line of printable text, bounded: it goes into an error message on a terminal.
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(text.split()))
    return text if len(text) <= 200 else text[:197] + "..."


def quarantined_message(layout: SpoolLayout, event_id: str) -> str:
    reason = quarantine_reason(layout, event_id) or "reason unknown"
    return (
        f"id {event_id} exists in corrupt/ (quarantined: {reason}); nothing was written. "
        f"See 'poetctl corrupt show {event_id}.json'; requeue it once fixed, or emit under another id"
    )
