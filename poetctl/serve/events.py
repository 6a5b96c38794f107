"""``POST /events``: one event (``application/json``) or a JSON-lines batch, validated whole, then committed.

Each body goes through the same parser as ``poetctl emit --batch``
(:func:`poetctl.cli.emitting.parse_batch_lines`): envelopes with ``type`` and
``payload`` (an ``id`` makes it idempotent), or bare payloads with
``?type=<event type>``. One invalid line refuses the whole request (422, every
bad line named with its field) and nothing is written.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InvalidData
from .guards import Refused

SINGLE_TYPES = ("application/json",)
BATCH_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines", "application/jsonlines")
MAX_ERRORS = 20
_LINE = re.compile(r"\Abody:(\d+): ")
_FIELD = re.compile(r"\$[A-Za-z0-9_.\[\]-]*")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def lines_of(body: bytes, batch: bool) -> list[tuple[int, bytes]]:
    """``(line number, bytes)`` of a batch; a single event is line 1 whatever its layout."""
    if not batch:
        return [(1, body)]
    return [(n, line) for n, line in enumerate(body.split(b"\n"), 1)]


def describe(message: str) -> dict[str, Any]:
    """A parser error ``body:LINE: ...$.field...`` as ``{"line", "field", "message"}``."""
    out: dict[str, Any] = {}
    m = _LINE.match(message)
    if m:
        out["line"] = int(m.group(1))
        message = message[m.end() :]
    f = _FIELD.search(message)
    if f and f.group() != "$":
        out["field"] = f.group()
    # Schema errors span lines (the schema's path, then the failing field): a JSON error message is one line.
    out["message"] = " ".join(message.split())
    return out


def parse(router: Any, body: bytes, content_type: str, max_event_bytes: int, event_type: str | None) -> list[Any]:
    """The built ``(event, keyed)`` pairs of a request body; Refused (400/415/422) naming each bad line."""
    from ..cli.emitting import parse_batch_lines

    kind = media_type(content_type)
    if kind not in SINGLE_TYPES + BATCH_TYPES:
        raise Refused(
            415,
            "unsupported_media_type",
            f"Content-Type {kind or '(none)'!r}: send application/json (one event) "
            "or application/x-ndjson (JSON lines)",
        )
    batch = kind in BATCH_TYPES
    if not body.strip():
        raise Refused(400, "empty", "the request body is empty; expected an event" + ("s" if batch else ""))
    lines = lines_of(body, batch)
    for n, line in lines:
        if len(line) > max_event_bytes:
            raise Refused(
                413,
                "too_large",
                f"line {n} is {len(line)} bytes; the event limit is {max_event_bytes} bytes (max_event_bytes)",
                line=n,
            )
    built, errors = parse_batch_lines(router, iter(lines), "body", event_type)
    if errors:
        shown = [describe(e) for e in errors[:MAX_ERRORS]]
        first = shown[0]
        where = f"line {first['line']}: " if "line" in first and batch else ""
        raise Refused(
            422,
            "invalid_event",
            f"{len(errors)} invalid event(s); nothing was written. First: {where}{first['message']}",
            errors=shown,
        )
    if not built:
        raise Refused(400, "empty", "the request body holds no events (only blank lines)")
    return built


def commit(router: Any, built: list[Any]) -> dict[str, Any]:
    """Commit all of ``built`` as one group (all or nothing); the answer's JSON.

    With ``[limits]`` set, a full spool or a source over its rate is refused at
    once with 429 and ``Retry-After`` (seconds, rounded up): nothing is written.
    """
    import math

    from ..limits import Backpressure
    from ..transport import Quarantined, State

    try:
        added = router.commit_events(built, wait=0.0)
    except Backpressure as exc:
        retry = str(max(1, math.ceil(exc.retry_after)))
        raise Refused(429, "backpressure", exc.message, {"Retry-After": retry}, retry_after=int(retry)) from None
    except Quarantined as exc:
        raise Refused(409, "quarantined", exc.message) from None
    except InvalidData as exc:  # an event that grew past the limit once sealed
        raise Refused(413, "too_large", str(exc)) from None
    ids = [ev.id for ev, _ in built]
    state_of = router.transport.state_of
    dead = [ids[i] for i, a in enumerate(added) if not a and state_of(ids[i]) is State.DEAD]
    out: dict[str, Any] = {"ids": ids, "added": sum(1 for a in added if a)}
    if len(ids) - out["added"]:
        out["existing"] = [ids[i] for i, a in enumerate(added) if not a]
    if dead:
        out["dead"] = dead
    return out
