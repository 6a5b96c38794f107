"""The event envelope: construction, canonical JSON, checksum, parsing.

An event on disk is one JSON object (the seed's "Standard Event Structure"
plus ``topic``, ``causation_id``, optional ``expires_at`` and ``checksum``).
The checksum is ``sha256:`` + hex digest of the *canonical* form of the
envelope without the checksum: orjson with sorted keys and no whitespace.
It is therefore independent of how the file is formatted, so an event printed
by ``tail --output jsonl`` and fed back to ``emit --batch`` verifies unchanged.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from .errors import InvalidData
from .ids import EVENT_ID_RE, TYPE_RE
from .jsoninput import MAX_DEPTH as MAX_DEPTH
from .jsoninput import check_depth as check_depth
from .jsoninput import first_problem
from .jsoninput import parse_json as parse_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import _Hash
    from typing import Any


def _first_sha256(data: bytes) -> _Hash:
    """SHA-256 of ``data``: the standard library's own for a process's first few, then hashlib's.

    ``import hashlib`` loads OpenSSL's libcrypto (~11M instructions, more than a
    one-event ``emit`` or ``tail -n 10`` spends hashing); hashlib's SHA-256
    is the faster one on many or large events (the daemon, batches), so it
    takes over after :data:`_PLAIN_HASHES` calls. Both give the same digest.
    """
    global _sha256, _plain_left
    if _plain_left > 0:
        _plain_left -= 1
        plain = _plain_sha256()
        if plain is not None:
            return plain(data)
    from hashlib import sha256

    _sha256 = sha256
    return sha256(data)


def _plain_sha256() -> Callable[[bytes], _Hash] | None:
    import importlib

    for name in ("_sha256", "_sha2"):  # Python 3.11, 3.12+
        try:
            fn: Callable[[bytes], _Hash] = importlib.import_module(name).sha256
            return fn
        except (ImportError, AttributeError):
            continue
    return None


_PLAIN_HASHES = 16
_plain_left = _PLAIN_HASHES
# hashlib.sha256 after the first few calls (no per-call import on the emit and daemon paths).
_sha256: Callable[[bytes], _Hash] = _first_sha256

SCHEMA_VERSION = "1.0"
CHECKSUM_PREFIX = "sha256:"

# Envelope keys in the order they are written to disk (readability only).
ENVELOPE_KEYS = (
    "id",
    "type",
    "source",
    "timestamp",
    "topic",
    "correlation_id",
    "causation_id",
    "causation_depth",
    "expires_at",
    "priority",
    "metadata",
    "payload",
    "checksum",
)


# Event's fields in order: the constructor's parameters, its repr and its equality (``sealed`` aside).
FIELDS = (
    "id",
    "type",
    "source",
    "timestamp",
    "topic",
    "payload",
    "metadata",
    "correlation_id",
    "causation_id",
    "expires_at",
    "checksum",
    "causation_depth",
    "priority",
)
_NEW_DICT: Any = object()  # metadata's default: a new dict per event


class Event:
    """One event. ``payload`` and ``metadata`` are plain JSON objects.

    Written out rather than a dataclass (same constructor, repr and equality):
    importing dataclasses (and inspect, ast, dis with it) and building the class
    cost more than ``tail -n 10`` does. :meth:`replace` is ``dataclasses.replace``.
    """

    __slots__ = (*FIELDS, "sealed")
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value (as the dataclass was)

    def __init__(
        self,
        id: str,
        type: str,
        source: str,
        timestamp: float,
        topic: str,
        payload: dict[str, Any],
        metadata: dict[str, Any] = _NEW_DICT,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        expires_at: float | None = None,
        checksum: str | None = None,
        causation_depth: int | None = None,
        priority: str | None = None,
    ) -> None:
        self.id = id
        self.type = type
        self.source = source
        self.timestamp = timestamp
        self.topic = topic
        self.payload = payload
        self.metadata = {} if metadata is _NEW_DICT else metadata
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.expires_at = expires_at
        self.checksum = checksum
        # Follow-up generation: None (stored as absent) means 0, an event from outside any
        # handler; a handler's follow-up carries its cause's depth + 1 (see EventRouter.build).
        self.causation_depth = causation_depth
        # Delivery class: "high", "low", or None (stored as absent) for normal; see poetctl.priority.
        self.priority = priority
        # (checksum, line): the stored line as the envelope builder sealed it (serialised once, see
        # line()). Used only while ``checksum`` is still the one it was made with: seal() drops it.
        self.sealed: tuple[str, bytes] | None = None

    id: str
    type: str
    source: str
    timestamp: float
    topic: str
    payload: dict[str, Any]
    metadata: dict[str, Any]
    correlation_id: str | None
    causation_id: str | None
    expires_at: float | None
    checksum: str | None
    causation_depth: int | None
    priority: str | None

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Event)
        return self._values() == other._values()

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in FIELDS)
        return f"{self.__class__.__qualname__}({inner})"

    def replace(self, **changes: Any) -> Event:
        """A copy with ``changes`` (field names), as ``dataclasses.replace`` made: not sealed."""
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise TypeError(f"Event has no field {sorted(unknown)[0]!r}")
        values = {f: changes[f] if f in changes else getattr(self, f) for f in FIELDS}
        return self.__class__(**values)

    def to_dict(self, *, with_checksum: bool = True) -> dict[str, Any]:
        """The envelope as a dict in on-disk key order, optional keys omitted when None."""
        d: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "timestamp": self.timestamp,
            "topic": self.topic,
        }
        if self.correlation_id is not None:
            d["correlation_id"] = self.correlation_id
        if self.causation_id is not None:
            d["causation_id"] = self.causation_id
        if self.causation_depth is not None:
            d["causation_depth"] = self.causation_depth
        if self.expires_at is not None:
            d["expires_at"] = self.expires_at
        if self.priority is not None:
            d["priority"] = self.priority
        d["metadata"] = self.metadata
        d["payload"] = self.payload
        if with_checksum:
            d["checksum"] = self.checksum or compute_checksum(d)
        return d

    def seal(self) -> Event:
        """Set ``checksum`` from the current content; returns self."""
        self.sealed = None
        self.checksum = compute_checksum(self.to_dict(with_checksum=False))
        return self

    def to_json(self) -> bytes:
        """Compact JSON of the whole envelope, checksum included (one line, no newline)."""
        from .stdjson import dumps  # orjson's bytes; without importing it where a command has not (see there)

        return dumps(self.to_dict())

    def line(self) -> bytes:
        """What a spool file holds: the canonical envelope (sorted keys, ``checksum`` included) and a newline.

        The bytes the envelope builder made when it sealed the event when
        they are still current (same checksum), so a large payload is not
        serialised again on the emit path. Hashing it with the checksum
        member spliced out gives the checksum (:func:`without_checksum_member`).
        """
        sealed = self.sealed
        if sealed is not None and sealed[0] == self.checksum:
            return sealed[1]
        # Canonical, as the builder stores it: sorted keys, the checksum member in its sorted place.
        d = self.to_dict()
        if "orjson" not in sys.modules:  # a one-event command: orjson's bytes without importing it
            from .stdjson import lean_dumps

            data = lean_dumps(d, sort_keys=True)
            if data is not None:
                return data + b"\n"
        import orjson

        return orjson.dumps(d, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Build from an envelope dict already checked against the envelope schema."""
        # Positional arguments in field order: this runs once per event the daemon reads.
        get = d.get
        return cls(
            d["id"],
            d["type"],
            d["source"],
            d["timestamp"],
            d["topic"],
            d["payload"],
            get("metadata") or {},
            get("correlation_id"),
            get("causation_id"),
            get("expires_at"),
            get("checksum"),
            get("causation_depth"),
            get("priority"),
        )


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no insignificant whitespace.

    Raises :class:`InvalidData` (not orjson's TypeError) for what JSON cannot carry:
    an integer beyond 64 bits, a non-string key, nesting past orjson's limit of 254
    levels, a type orjson does not know. Callers that may hold NaN or Infinity (which
    orjson writes as null) check with :func:`check_depth` first; :func:`compute_checksum` does.
    """
    if "orjson" not in sys.modules:  # a one-event command (see EnvelopeBuilder._use_orjson)
        from .stdjson import lean_dumps

        data = lean_dumps(obj, sort_keys=True)  # orjson's exact bytes, or None: orjson decides
        if data is not None:
            return data
    import orjson  # imported already wherever this runs per event (the daemon, a batch): a dict lookup

    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        problem = first_problem(obj, "$", MAX_DEPTH + 1)  # names the JSON path of the usual causes
        raise InvalidData(problem or f"not representable as JSON: {exc}") from None


def compute_checksum(envelope: dict[str, Any]) -> str:
    """Checksum of ``envelope`` ignoring any ``checksum`` key it has.

    Refuses (:class:`InvalidData`) an envelope holding NaN or Infinity, which would be
    sealed as null; a document read by orjson never holds them, so only values handed
    in by the library are checked, and only when the bytes hold a null at all.
    """
    if "checksum" in envelope:
        envelope = {k: v for k, v in envelope.items() if k != "checksum"}
    data = canonical(envelope)
    if b"null" in data:
        check_depth(envelope, limit=MAX_DEPTH + 1)
    return CHECKSUM_PREFIX + _sha256(data).hexdigest()


def checksum_of(canonical_bytes: bytes) -> str:
    """The ``checksum`` value for an envelope whose :func:`canonical` bytes are given."""
    return CHECKSUM_PREFIX + _sha256(canonical_bytes).hexdigest()


def checksum_member_span(data: bytes, stated: str) -> tuple[int, int] | None:
    """Where the ``"checksum":"<stated>"`` member of ``data`` lies with one comma beside it: ``(head, tail)``.

    What is left without it is ``data[:head] + data[tail:]``. None when
    ``stated`` is not a checksum or the member is not found between two
    others. The member cannot occur inside a JSON string (its quotes would be
    escaped there); the first occurrence is taken.
    """
    if len(stated) != 71 or not stated.startswith(CHECKSUM_PREFIX):
        return None
    member = b'"checksum":"' + stated.encode() + b'"'
    i = data.find(member)
    if i <= 0:
        return None
    j = i + len(member)
    if data[j : j + 1] == b",":  # a member follows: the member and the comma after it
        return i, j + 1
    if data[i - 1 : i] == b",":  # the last member: the comma before it and the member
        return i - 1, j
    return None


def without_checksum_member(data: bytes, stated: str) -> bytes | None:
    """``data``, a stored line, with its ``"checksum":"<stated>"`` member (and a comma, and the newline) taken out.

    The builder stores each event in canonical form with the checksum member
    in its sorted place (:meth:`Event.line`), so what is left is exactly the
    bytes the checksum was computed over. None when there is no such member
    (:func:`checksum_member_span`); a caller compares the rest with what it parsed.
    """
    span = checksum_member_span(data, stated)
    if span is None:
        return None
    rest = data[: span[0]] + data[span[1] :]
    return rest[:-1] if rest[-1:] == b"\n" else rest


def stored_checksum_matches(data: bytes, stated: str) -> bool:
    """True if ``data``, a stored line, hashes to ``stated`` with its checksum member spliced out.

    A hash check alone: it proves the bytes are the ones the checksum was
    computed over, not that they are canonical (a hand-made line with a
    duplicate key could match). Readers therefore compare the spliced bytes
    with their own canonical serialisation instead (``fs/reader.py``).
    """
    rest = without_checksum_member(data, stated)
    return rest is not None and _sha256(rest).hexdigest() == stated[len(CHECKSUM_PREFIX) :]


def checksum_matches(envelope: dict[str, Any]) -> bool:
    """True if ``envelope['checksum']`` is a string equal to the checksum of the rest.

    Same verdict as comparing with :func:`compute_checksum`, without copying
    the envelope: the key is taken out for hashing and put back (at the end;
    key order carries no meaning in an envelope).
    """
    if "checksum" not in envelope:
        return False
    stated = envelope.pop("checksum")
    try:
        return isinstance(stated, str) and stated == CHECKSUM_PREFIX + _sha256(canonical(envelope)).hexdigest()
    finally:
        envelope["checksum"] = stated


def verify_checksum(envelope: dict[str, Any], where: str | None = None) -> None:
    """Raise :class:`InvalidData` unless ``envelope['checksum']`` matches its content."""
    stated = envelope.get("checksum")
    if stated is None:
        raise InvalidData("missing checksum: expected 'checksum' = 'sha256:<64 hex>'", where=where)
    actual = compute_checksum(envelope)
    if stated != actual:
        raise InvalidData(
            f"checksum mismatch at $.checksum: file says {stated!r}, content hashes to {actual!r}",
            where=where,
        )


def now() -> float:
    """Unix time in seconds, to the microsecond (what ``timestamp`` stores).

    Whole microseconds divided by 10**6: the nearest float to a 6-decimal number,
    as ``round(time.time(), 6)`` gives, at a fraction of its cost (float round()
    with digits goes through decimal conversion; this runs once per event).
    """
    return time.time_ns() // 1000 / 1_000_000


def check_id(value: object, where: str | None = None, path: str = "$.id") -> str:
    if not isinstance(value, str) or EVENT_ID_RE.match(value) is None:
        raise InvalidData(
            f"bad event id at {path}: {value!r}; expected 1-128 characters matching "
            f"{EVENT_ID_RE.pattern} (letters, digits, '_', '.', ':', '-')",
            where=where,
        )
    return value


def check_type(value: object, where: str | None = None, path: str = "$.type") -> str:
    if not isinstance(value, str) or TYPE_RE.match(value) is None:
        raise InvalidData(
            f"bad event type at {path}: {value!r}; expected dot notation such as "
            "'drift.detected' (lowercase letters, digits, '_')",
            where=where,
        )
    return value
