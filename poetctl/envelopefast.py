"""A fast, conservative check of envelope.json (what the daemon runs on every event it reads)."""

from __future__ import annotations

from .ids import TYPE_RE, lazy_pattern
from .schemafiles import MAX_SCHEMA_VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# -- a fast, conservative check of envelope.json --------------------------------------------
# The daemon checks the envelope of every event it reads; the schema validator
# costs ~8 us per event on the machines we measure, this ~1.5 us. The check is
# deliberately *stricter or equal* to envelope.json: True means the schema
# accepts the envelope, False only means "ask the schema" (which then decides
# and explains). tests/test_schemas.py holds it to that on valid and mutated
# envelopes. Keep it in step with schemas/envelope.json.
_ENVELOPE_KEYS = frozenset(
    ("id", "type", "source", "timestamp", "topic", "correlation_id", "causation_id", "expires_at")
) | {"metadata", "payload", "checksum", "causation_depth", "priority"}
_ID = lazy_pattern(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_TYPE = TYPE_RE  # the same language, anchored (fullmatch either way): one compile, not two, in an emit
_TOPIC = lazy_pattern(r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:/[A-Za-z0-9_][A-Za-z0-9_-]*)*")
_NO_CONTROL = lazy_pattern(r"[^\x00-\x1f]+")
_VERSION = lazy_pattern(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_HEX = "0123456789abcdef"
_PRIORITIES = ("high", "normal", "low")  # envelope.json's enum for priority (a tuple: an unhashable value is no error)
MAX_CAUSATION_DEPTH = 1_000_000  # envelope.json's maximum for causation_depth


def _text(v: Any, lo: int, hi: int) -> bool:
    return type(v) is str and lo <= len(v) <= hi


# envelope.json bounds timestamp and expires_at to 2000-01-01 .. 2200-01-01 UTC (Unix seconds):
# readers turn them into datetimes, which end at year 9999, and nothing real lies outside.
TIME_MIN = 946684800
TIME_MAX = 7258118400


def _sane_time(v: Any) -> bool:
    return (type(v) is float or type(v) is int) and TIME_MIN <= v <= TIME_MAX


def _head_valid(type_: Any, topic: Any, source: Any, version: Any, environment: Any, service: Any) -> bool:
    return (
        type(type_) is str
        and _TYPE.fullmatch(type_) is not None
        and type(topic) is str
        and len(topic) <= 512
        and _TOPIC.fullmatch(topic) is not None
        and _text(source, 1, 256)
        and type(version) is str
        and _VERSION.fullmatch(version) is not None
        and _text(environment, 1, 64)
        and _text(service, 1, 256)
    )


# (type, topic, source, version, environment, service) tuples already found valid:
# a spool holds few distinct ones, so most events skip six checks. Bounded.
_VALID_HEADS: set[tuple[Any, ...]] = set()
_MAX_HEADS = 4096


def envelope_surely_valid(d: Any, checksum_verified: bool = False) -> bool:
    """True only if ``d`` certainly matches envelope.json (see the comment above).

    ``checksum_verified``: the caller compared ``d["checksum"]`` with the
    computed ``sha256:<hex>``, which settles its pattern.
    """
    if type(d) is not dict or not _ENVELOPE_KEYS.issuperset(d):
        return False
    get = d.get
    m = get("metadata")
    if type(m) is not dict:
        return False
    mget = m.get
    head = (get("type"), get("topic"), get("source"), mget("version"), mget("environment"), mget("service"))
    try:
        known = head in _VALID_HEADS
    except TypeError:  # an unhashable value (a list, an object): certainly not a valid head
        return False
    if not known:
        if not _head_valid(*head):
            return False
        if len(_VALID_HEADS) < _MAX_HEADS:
            _VALID_HEADS.add(head)
    if "schema_version" in m:
        v = m["schema_version"]
        if type(v) is not int or not 1 <= v <= MAX_SCHEMA_VERSION:
            return False
    v = get("id")
    if type(v) is not str or _ID.fullmatch(v) is None:
        return False
    if not _sane_time(get("timestamp")) or type(get("payload")) is not dict:
        return False
    if not checksum_verified and "checksum" in d:
        v = d["checksum"]
        # sha256:[0-9a-f]{64}, without a regular expression to compile (start-up): strip leaves any other character
        if type(v) is not str or len(v) != 71 or not v.startswith("sha256:") or v[7:].strip(_HEX):
            return False
    if "correlation_id" in d:
        v = d["correlation_id"]
        if not _text(v, 1, 256) or _NO_CONTROL.fullmatch(v) is None:
            return False
    if "causation_id" in d:
        v = d["causation_id"]
        if type(v) is not str or _ID.fullmatch(v) is None:
            return False
    if "causation_depth" in d:
        # Exactly int: the schema's "integer" also admits 2.0, left to the schema to decide.
        v = d["causation_depth"]
        if type(v) is not int or not 0 <= v <= MAX_CAUSATION_DEPTH:
            return False
    if "priority" in d and d["priority"] not in _PRIORITIES:
        return False
    return "expires_at" not in d or _sane_time(d["expires_at"])
