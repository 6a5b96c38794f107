"""CloudEvents 1.0 structured JSON <-> the poetctl envelope (DESIGN.md §2).

Mapping (``to_cloudevent``)::

    id             -> id                  type        -> type
    source         -> source              timestamp   -> time (RFC 3339, microseconds, UTC)
    payload        -> data                              + datacontenttype "application/json"
    correlation_id -> correlationid       causation_id -> causationid   (Correlation extension)
    topic          -> poettopic           checksum    -> poetchecksum
    expires_at     -> poetexpiresat (the JSON number as a string)
    causation_depth -> poetcausationdepth (an integer: CloudEvents extensions may be integers)
    metadata       -> poetversion, poetenvironment, poetservice when it holds just
                      those string keys, else poetmetadata (compact JSON string)
    timestamp      -> poettimestamp (JSON number as a string), only when ``time``
                      cannot carry the exact value (an integer, or more than
                      microsecond precision); ``time`` (optional in CloudEvents)
                      is left out when no RFC 3339 date can show the timestamp
                      (before 1970, after year 9999: absurd values on disk)

CloudEvents extension values must be strings, booleans or integers, so the
numbers and the metadata object travel as JSON text. ``from_cloudevent``
inverts this exactly, so the checksum still verifies; a CloudEvent from
elsewhere (no ``poet*`` extensions) becomes a partial envelope without topic,
metadata or checksum, which :meth:`poetctl.router.EventRouter.ingest` completes.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import orjson

from .errors import InvalidData
from .event import ENVELOPE_KEYS, Event

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
EXTENSION_NAME_RE = re.compile(r"^[a-z0-9]{1,20}\Z")
_META_KEYS = ("version", "environment", "service")
_TIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})\Z")


def format_time(ts: float) -> str:
    """RFC 3339 UTC with microseconds, formatted from the decimal digits of ``ts``.

    Working from ``f"{ts:.6f}"`` (not via datetime arithmetic) makes
    :func:`parse_time` return the very same float for any timestamp that has
    at most microsecond precision, which is what :func:`poetctl.event.now` stores.
    """
    text = f"{ts:.6f}"
    whole, frac = text.split(".")
    sec = int(whole)
    if sec < 0:
        raise ValueError(f"timestamp {ts!r} is before 1970")
    base = dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac}Z"


def parse_time(text: str) -> float:
    """Unix seconds of an RFC 3339 time; the inverse of :func:`format_time`."""
    m = _TIME_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time such as 2026-11-27T08:00:00.123456Z")
    year, month, day, hour, minute, second = (int(m[i]) for i in range(1, 7))
    frac = m[7] or "0"
    offset = 0
    zone = m[8]
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    # Validates the calendar fields (e.g. rejects February 30).
    dt.datetime(year, month, day, hour, minute, min(second, 59))
    sec = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return float(f"{sec}.{frac}")


def _number_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _number_from_text(text: Any, name: str) -> Any:
    try:
        value = orjson.loads(text) if isinstance(text, str) else None
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidData(f"$.{name}: expected a JSON number as a string, got {text!r}")
    return value


def to_cloudevent(event: Event | Mapping[str, Any]) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON object for an envelope (or Event)."""
    env: Mapping[str, Any] = event.to_dict() if isinstance(event, Event) else event
    ts = env["timestamp"]
    ce: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": env["id"],
        "source": env["source"],
        "type": env["type"],
    }
    try:
        ce["time"] = format_time(ts)
    except (ValueError, OverflowError, OSError):
        pass  # no RFC 3339 date for it (before 1970, after 9999, 1e300): poettimestamp carries it
    ce["datacontenttype"] = CONTENT_TYPE
    if env.get("correlation_id") is not None:
        ce["correlationid"] = env["correlation_id"]
    if env.get("causation_id") is not None:
        ce["causationid"] = env["causation_id"]
    if "topic" in env:
        ce["poettopic"] = env["topic"]
    if "time" not in ce or not isinstance(ts, float) or parse_time(ce["time"]) != ts:
        ce["poettimestamp"] = _number_text(ts)
    if env.get("expires_at") is not None:
        ce["poetexpiresat"] = _number_text(env["expires_at"])
    if env.get("causation_depth") is not None:
        ce["poetcausationdepth"] = env["causation_depth"]
    meta = env.get("metadata")
    if isinstance(meta, Mapping):
        if set(meta) <= set(_META_KEYS) and all(isinstance(v, str) for v in meta.values()):
            for k in _META_KEYS:
                if k in meta:
                    ce["poet" + k] = meta[k]
        else:
            ce["poetmetadata"] = orjson.dumps(meta).decode()
    if env.get("checksum") is not None:
        ce["poetchecksum"] = env["checksum"]
    ce["data"] = env["payload"]
    return ce


def from_cloudevent(ce: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """The envelope dict for a CloudEvents 1.0 structured JSON object.

    Raises :class:`InvalidData` naming the attribute when ``ce`` is not a
    CloudEvent this tool can take (wrong specversion, binary data, non-JSON
    content type, missing id/source/type, a bad time).
    """
    if not isinstance(ce, Mapping):
        raise InvalidData("expected a JSON object (a CloudEvent)", where=where)
    if ce.get("specversion") != SPEC_VERSION:
        raise InvalidData(f"$.specversion: expected '1.0', got {ce.get('specversion')!r}", where=where)
    for attr in ("id", "source", "type"):
        if not isinstance(ce.get(attr), str) or not ce[attr]:
            raise InvalidData(f"$.{attr}: required CloudEvents attribute missing or empty", where=where)
    if "data_base64" in ce:
        raise InvalidData("$.data_base64: binary data is not supported; expected JSON 'data'", where=where)
    ctype = ce.get("datacontenttype", CONTENT_TYPE)
    if not isinstance(ctype, str) or not (
        ctype.split(";")[0].strip() == CONTENT_TYPE or ctype.split(";")[0].strip().endswith("+json")
    ):
        raise InvalidData(f"$.datacontenttype: expected 'application/json', got {ctype!r}", where=where)
    data = ce.get("data")
    if not isinstance(data, dict):
        raise InvalidData("$.data: expected a JSON object (the payload)", where=where)

    env: dict[str, Any] = {"id": ce["id"], "type": ce["type"], "source": ce["source"]}
    if "poettimestamp" in ce:
        env["timestamp"] = _number_from_text(ce["poettimestamp"], "poettimestamp")
    elif ce.get("time") is not None:
        try:
            env["timestamp"] = parse_time(ce["time"])
        except ValueError as exc:
            raise InvalidData(f"$.time: {exc}", where=where) from None
    if "poettopic" in ce:
        env["topic"] = ce["poettopic"]
    if ce.get("correlationid") is not None:
        env["correlation_id"] = ce["correlationid"]
    if ce.get("causationid") is not None:
        env["causation_id"] = ce["causationid"]
    if "poetexpiresat" in ce:
        env["expires_at"] = _number_from_text(ce["poetexpiresat"], "poetexpiresat")
    if "poetcausationdepth" in ce:
        depth = ce["poetcausationdepth"]
        if isinstance(depth, str) and depth.isascii() and depth.isdigit() and len(depth) <= 10:
            depth = int(depth)  # some bindings carry every attribute as a string
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise InvalidData(f"$.poetcausationdepth: expected an integer >= 0, got {depth!r}", where=where)
        env["causation_depth"] = depth
    if "poetmetadata" in ce:
        try:
            meta = orjson.loads(ce["poetmetadata"])
        except (orjson.JSONDecodeError, TypeError):
            meta = None
        if not isinstance(meta, dict):
            raise InvalidData("$.poetmetadata: expected a JSON object as a string", where=where)
        env["metadata"] = meta
    elif any("poet" + k in ce for k in _META_KEYS):
        env["metadata"] = {k: ce["poet" + k] for k in _META_KEYS if "poet" + k in ce}
    env["payload"] = data
    if "poetchecksum" in ce:
        env["checksum"] = ce["poetchecksum"]
    return {k: env[k] for k in ENVELOPE_KEYS if k in env}


def extension_names(ce: Mapping[str, Any]) -> list[str]:
    """The extension attribute names in ``ce`` (everything not defined by the core spec)."""
    core = {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "dataschema",
        "subject",
        "data",
        "data_base64",
    }
    return [k for k in ce if k not in core]
