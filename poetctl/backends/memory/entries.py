"""What the memory backend stores per event, and how its bytes are read back (shared by its transport and consumer)."""

from __future__ import annotations

from hashlib import sha256
from typing import Any

import orjson

from ...errors import InvalidData
from ...event import CHECKSUM_PREFIX, MAX_DEPTH, Event, parse_json, verify_checksum
from ...ids import time_of
from ...priority import NORMAL
from ...strictjson import surely_exact
from ...transport import (
    Record,
    State,
)

_REQUIRED = ("id", "type", "source", "timestamp", "topic", "payload")


class Entry:
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
    """Bytes to a verified Event; raises InvalidData whose message starts with the quarantine reason.

    A sound event is read by one parse and one canonical serialisation (what the spool's reader does):
    the same bytes serve the exactness test and the checksum. Anything that path does not accept
    outright goes the checked way (:func:`_decode_checked`), which gives the verdict and the message.
    """
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError:
        d = None
    # Nesting deeper than the limit takes more brackets than that (those in strings count too: never too few).
    if type(d) is dict and data.count(b"{") + data.count(b"[") <= MAX_DEPTH and all(k in d for k in _REQUIRED):
        stated = d.pop("checksum", None)
        try:
            canon = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # not expected from what orjson parsed
            canon = b""
        if stated is not None:
            d["checksum"] = stated
        if (
            type(stated) is str
            and canon
            and d["id"] == expected_id
            # Duplicate keys, integers beyond 64 bits (orjson resolved them silently); the checksum's colons left out.
            and surely_exact(data, canon, 1 + stated.count(":"))
            and stated == CHECKSUM_PREFIX + sha256(canon).hexdigest()
        ):
            return Event.from_dict(d)
    return _decode_checked(data, expected_id)


def _decode_checked(data: bytes, expected_id: str) -> Event:
    """:func:`decode` step by step: the first problem found is the error."""
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
