"""The event envelope: construction, canonical JSON, checksum, parsing.

An event on disk is one JSON object (the seed's "Standard Event Structure"
plus ``topic``, ``causation_id``, optional ``expires_at`` and ``checksum``).
The checksum is ``sha256:`` + hex digest of the *canonical* form of the
envelope without the checksum: orjson with sorted keys and no whitespace.
It is therefore independent of how the file is formatted, so an event printed
by ``tail --output jsonl`` and fed back to ``emit --batch`` verifies unchanged.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from hashlib import sha256 as _sha256
from typing import Any

import orjson

from .errors import InvalidData
from .ids import EVENT_ID_RE, TYPE_RE

SCHEMA_VERSION = "1.0"
MAX_DEPTH = 64
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
    "metadata",
    "payload",
    "checksum",
)


@dataclass(slots=True)
class Event:
    """One event. ``payload`` and ``metadata`` are plain JSON objects."""

    id: str
    type: str
    source: str
    timestamp: float
    topic: str
    payload: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    causation_id: str | None = None
    expires_at: float | None = None
    checksum: str | None = None
    # Follow-up generation: None (stored as absent) means 0, an event from outside any
    # handler; a handler's follow-up carries its cause's depth + 1 (see EventRouter.build).
    causation_depth: int | None = None

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
        d["metadata"] = self.metadata
        d["payload"] = self.payload
        if with_checksum:
            d["checksum"] = self.checksum or compute_checksum(d)
        return d

    def seal(self) -> Event:
        """Set ``checksum`` from the current content; returns self."""
        self.checksum = compute_checksum(self.to_dict(with_checksum=False))
        return self

    def to_json(self) -> bytes:
        """Compact JSON of the whole envelope, checksum included (one line, no newline)."""
        return orjson.dumps(self.to_dict())

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
        )


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no insignificant whitespace."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def compute_checksum(envelope: dict[str, Any]) -> str:
    """Checksum of ``envelope`` ignoring any ``checksum`` key it has."""
    if "checksum" in envelope:
        envelope = {k: v for k, v in envelope.items() if k != "checksum"}
    return CHECKSUM_PREFIX + hashlib.sha256(canonical(envelope)).hexdigest()


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
    """Unix time in seconds, rounded to microseconds (what ``timestamp`` stores)."""
    return round(time.time(), 6)


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


def parse_json(data: bytes, where: str | None = None, max_bytes: int | None = None) -> Any:
    """Parse JSON bytes with the limits every input goes through.

    Raises :class:`InvalidData` for oversize input, invalid UTF-8, invalid JSON
    and nesting deeper than :data:`MAX_DEPTH`; the message names ``where``.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidData(
            f"input is {len(data)} bytes; the limit is {max_bytes} bytes (max_event_bytes)",
            where=where,
        )
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "utf-8" in msg.lower() or "surrogate" in msg.lower():
            raise InvalidData(f"not valid UTF-8: {msg}", where=where) from None
        if "recursion" in msg.lower() or "depth limit" in msg.lower():
            raise InvalidData(f"JSON nested deeper than {MAX_DEPTH} levels", where=where) from None
        raise InvalidData(f"invalid JSON: {msg}", where=where) from None
    check_depth(obj, where)
    return obj


def check_depth(obj: Any, where: str | None = None) -> None:
    """Raise :class:`InvalidData` if ``obj`` nests deeper than :data:`MAX_DEPTH`."""
    # Exact type checks: JSON documents only hold dicts and lists as containers,
    # and this runs for every event on the hot paths.
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node if type(node) is list else ():
            kind = type(child)
            if kind is dict or kind is list:
                if depth >= MAX_DEPTH:
                    raise InvalidData(
                        f"JSON nested deeper than {MAX_DEPTH} levels; expected a flatter document", where=where
                    )
                stack.append((child, depth + 1))
