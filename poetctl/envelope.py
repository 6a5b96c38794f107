"""The envelope builder: validates, links and seals events (the first part of :class:`~poetctl.router.EventRouter`).

:class:`EnvelopeBuilder` turns ``(type, payload)`` pairs, whole or partial
envelopes and :class:`~poetctl.event.Event` objects into sealed events:
schema and payload checks, the topic from the routing table, the checksum.
Inside a handler (:meth:`EnvelopeBuilder.set_cause`) it links each new event
to its cause (causation id, inherited correlation id, ``causation_depth`` one
more than the cause's) and derives its id from the cause, the handler and the
call's position, so re-running the handler deduplicates its follow-ups. It
writes nothing: publishing is :class:`~poetctl.publish.Publisher`'s job.
"""

from __future__ import annotations

import _thread  # threading's own lock/local types; threading itself stays out of a one-event emit (start-up)
import sys
from collections.abc import Callable, Mapping

from .config import DEFAULT_MAX_CAUSATION_DEPTH, Config
from .errors import InvalidData, Permanent
from .event import (
    CHECKSUM_PREFIX,
    MAX_DEPTH,
    Event,
    canonical,
    check_depth,
    check_id,
    check_type,
    compute_checksum,
    now,
    verify_checksum,
)
from .ids import derived_id, uuid7
from .jsonscan import NULL as _NULL
from .jsonscan import SCAN_ALL as _SCAN_ALL
from .jsonscan import has_null as _has_null
from .jsonscan import openers as _openers
from .schemas import MAX_CAUSATION_DEPTH, SchemaRegistry
from .topics import ROUTES, default_template, topic_for

TYPE_CHECKING = False  # typing stays out of a one-event emit's imports (start-up)
if TYPE_CHECKING:
    from typing import Any

    EmitItem = tuple[str, Mapping[str, Any]] | Mapping[str, Any] | Event


class CausationDepthExceeded(InvalidData, Permanent):
    """A handler's follow-up would be deeper in its causal chain than ``max_causation_depth`` allows.

    Permanent: a retry re-runs the same handler on the same event at the same depth, so it cannot succeed;
    the event is dead-lettered at once (reason ``permanent``). After raising the limit, ``poetctl dead retry``
    re-runs it.
    """


class _Cause:
    # A plain class, as _TypeInfo: this module is on the path of a one-event ``poetctl emit``, which
    # starts without dataclasses (see poetctl.valueclass).
    __slots__ = ("buffer", "event", "handler", "position")

    def __init__(
        self, event: Event, handler: str, position: int = 0, buffer: list[tuple[Event, bool]] | None = None
    ) -> None:
        self.event = event
        self.handler = handler
        self.position = position
        # Follow-ups are buffered here and committed only if the handler succeeds.
        self.buffer = buffer


class EnvelopeBuilder:
    """Builds and seals events for one configuration and schema registry. Thread-safe.

    ``max_causation_depth`` (from ``[daemon]``, the daemon may set it) bounds a
    handler's follow-ups; the cause context is per thread.
    """

    def __init__(self, config: Config, registry: SchemaRegistry) -> None:
        self.config = config
        self.registry = registry
        self.max_causation_depth = _depth_limit(config)
        self._local = _thread._local()
        # Per event type, what build() would otherwise look up on every event (see _known).
        self._types: dict[str, _TypeInfo] = {}
        self._types_of: SchemaRegistry | None = None  # the registry _types was filled from
        # The first event is sealed without orjson unless the process has loaded it (see _use_orjson).
        self._first = True

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
        priority: str | None = None,
    ) -> tuple[Event, bool]:
        """Validate and seal a new event. Returns ``(event, keyed)``; keyed = caller chose the id.

        ``priority`` (high, normal, low) defaults to the cause's inside a handler, else normal.

        Inside a handler (see :meth:`set_cause`) ``causation_depth`` is the
        cause's + 1, whatever was passed, and past :attr:`max_causation_depth`
        raises :class:`CausationDepthExceeded` before anything else is done.
        """
        cause = self._cause()
        if cause is not None:
            causation_depth = self._follow_up_depth(cause, event_type, where)
        known = self._known(event_type)
        if known is None:
            check_type(event_type, where)
        if type(payload) is not dict and not isinstance(payload, Mapping):  # exact dict first: ABC checks cost
            raise InvalidData(f"$.payload: expected a JSON object, got {type(payload).__name__}", where=where)
        payload = dict(payload)
        payload_json = plain_json(payload) if _oj is not None or self._use_orjson() else None
        if payload_json is None:
            check_depth(payload, where, "$.payload")  # the walk finds (and words) any problem
        if known is not None and schema_version is None and _surely_valid(known, payload, self.config.validation):
            schema_version = known.newest
        else:  # the full check: an unknown type, a chosen version, or a payload the validator refuses (words it)
            chosen = schema_version
            schema_version = self._check_payload(event_type, payload, where, schema_version)
            if known is None and chosen is None:  # the newest version has just been loaded and compiled
                self._learn(event_type)
        keyed = id is not None
        if cause is not None:
            causation_id = causation_id or cause.event.id
            if correlation_id is None:
                correlation_id = cause.event.correlation_id
            if priority is None:
                priority = cause.event.priority  # follow-ups inherit it unless told otherwise
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
            topic=self._topic(event_type, payload) if known is None else known.topic_of(event_type, payload),
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
            # normal is stored as absent (the bytes of a normal event do not change); a bad value goes to the schema.
            priority=None if priority == "normal" else priority,
        )
        if payload_json is None or not self._seal(ev, payload_json, where):
            d = ev.to_dict(with_checksum=False)
            ev.checksum = d["checksum"] = compute_checksum(d)
            self.registry.check_envelope(d, where)
        return ev, keyed

    def _seal(self, ev: Event, payload_json: bytes, where: str | None) -> bool:
        """Seal ``ev`` around its payload's canonical bytes, which are embedded as they are (no second dump).

        The checksum is the same as :func:`compute_checksum`'s (the canonical
        envelope embeds the canonical payload as it is). The stored line is the
        canonical envelope itself with the ``checksum`` member in its sorted
        place (sorted keys, payload included), kept on the event
        (:meth:`Event.line`): a reader proves a line exact by comparing it, that
        member spliced out (:func:`poetctl.event.without_checksum_member`), with
        its own canonical serialisation, and hashes that.
        False, having changed nothing, when the rest of the envelope needs the
        careful path (a NaN, a value JSON cannot hold).
        """
        orjson = _oj  # loaded: payload_json came from plain_json
        d = ev.to_dict(with_checksum=False)
        payload = d["payload"]
        try:
            d["payload"] = orjson.Fragment(payload_json)
            canon = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
            if len(payload_json) > _SCAN_ALL:  # look for null in the head alone (the payload has none)
                d["payload"] = orjson.Fragment(b"{}")
                canon_head = orjson.dumps(d)
                d["payload"] = orjson.Fragment(payload_json)
            else:
                canon_head = canon
            if _NULL.search(canon_head) is not None:  # a NaN or Infinity outside the payload: the careful path
                return False
            checksum = d["checksum"] = CHECKSUM_PREFIX + _sha256(canon).hexdigest()
            # The same canonical bytes with the checksum member added: the payload is a Fragment, copied as is.
            line = orjson.dumps(d, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            return False
        d["payload"] = payload
        self.registry.check_envelope(d, where, checksum_verified=True)
        ev.checksum = checksum
        ev.sealed = (checksum, line)
        return True

    def _use_orjson(self) -> bool:
        """False for this builder's first event in a process that has not loaded orjson, else True.

        ``import orjson`` (which imports dataclasses, inspect, ast, uuid, platform...)
        costs a one-event ``poetctl emit`` a quarter of its run, so its one
        event is sealed on the careful path (:func:`compute_checksum`,
        :meth:`Event.line`), whose JSON comes from :mod:`poetctl.stdjson`:
        orjson's exact bytes. From the second event on (a batch, the library,
        the daemon's follow-ups), orjson seals, as before.
        """
        if self._first and "orjson" not in sys.modules:
            self._first = False
            return False
        _orjson()
        return True

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

    def _known(self, event_type: object) -> _TypeInfo | None:
        """What :meth:`_learn` kept about ``event_type`` (a valid, registered type), else None."""
        if self._types_of is not self.registry:  # a new registry (or the first call): nothing is known
            self._types = {}
            self._types_of = self.registry
            return None
        return self._types.get(event_type) if type(event_type) is str else None

    def _learn(self, event_type: str) -> None:
        """Keep what build() looks up per event for ``event_type``, which has just passed the full checks.

        A registry caches a type's versions and schemas for its lifetime, so
        the newest version, its validator and the topic template stay true.
        Bounded: a process emitting endless distinct types keeps the first ones.
        """
        if len(self._types) >= _MAX_TYPES:
            return
        registry = self.registry
        newest = registry.newest(event_type)
        # As _topic and topic_for resolve it: the routing table, else the schema's x-poet-topic, else the default.
        own = None if event_type in ROUTES else registry.topic_template(event_type)
        template = ROUTES.get(event_type) or own or default_template(event_type)
        self._types[event_type] = _TypeInfo(
            newest,
            registry.payload_validator(event_type, newest),
            None if "{fn}" in template else template,  # a {fn} template depends on the payload: topic_for
            own,
        )

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
                priority=d.get("priority"),
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


class _TypeInfo:
    __slots__ = ("fn_topics", "is_valid", "newest", "template", "topic")

    def __init__(self, newest: int, is_valid: Callable[[Any], bool], topic: str | None, template: str | None) -> None:
        self.newest = newest  # the newest schema version
        self.is_valid = is_valid  # the fast validator of that version (jsonschema-rs)
        self.topic = topic  # the topic of every event of the type, None when it depends on the payload
        self.template = template  # the template argument _topic gives topic_for (the schema's x-poet-topic)
        # function_name -> topic for a {fn} template: topic_for's answer depends on nothing else. Bounded.
        self.fn_topics: dict[str, str] = {}

    def topic_of(self, event_type: str, payload: dict[str, Any]) -> str:
        """What ``_topic(event_type, payload)`` returns, without a lookup per event."""
        if self.topic is not None:
            return self.topic
        fn = payload.get("function_name")
        if type(fn) is not str:
            return topic_for(event_type, payload, self.template)
        topic = self.fn_topics.get(fn)
        if topic is None:
            topic = topic_for(event_type, payload, self.template)
            if len(self.fn_topics) < _MAX_TYPES:
                self.fn_topics[fn] = topic
        return topic


_MAX_TYPES = 1024


def _surely_valid(known: _TypeInfo, payload: dict[str, Any], validation: bool) -> bool:
    """True if ``payload`` passes the newest schema (or validation is off); False: ask the registry."""
    if not validation:
        return True  # the type is known to be registered: check_known would pass
    try:
        return bool(known.is_valid(payload))
    except ValueError:  # not a JSON value: the registry's validate_payload words it
        return False


# orjson once some part of this process has needed it (_orjson); None until then: a one-event
# command seals without it (EnvelopeBuilder._use_orjson).
_oj: Any = None


def _orjson() -> Any:
    global _oj, _sha256
    from hashlib import sha256  # with orjson: _seal hashes many events (OpenSSL's is the faster)

    import orjson

    _sha256 = sha256
    _oj = orjson
    return orjson


_sha256: Any = None  # hashlib.sha256 once _orjson() has run (only _seal, which needs orjson, uses it)


def plain_json(value: dict[str, Any]) -> bytes | None:
    """``value``'s canonical JSON when it surely passes :func:`check_depth`, else None (the walk decides).

    orjson itself refuses what the walk refuses (a non-string key, an integer
    beyond 64 bits) except NaN and Infinity, which it writes as ``null``, and
    nesting up to its own limit of 254 levels. So bytes without ``null`` and
    with at most MAX_DEPTH containers in all (counting braces in strings too)
    need no walk over a large payload's every value.
    """
    orjson = _oj or _orjson()
    try:
        data: bytes = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    if _has_null(data) or _openers(data) > MAX_DEPTH:
        return None
    return data


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


__all__ = ["CausationDepthExceeded", "EmitItem", "EnvelopeBuilder", "check_duplicates", "same_content"]
