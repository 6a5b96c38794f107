"""``POST /webhooks/pagerduty``: PagerDuty v3 webhooks; ``incident.resolved`` becomes ``feedback.alert_resolved``.

Signature (PagerDuty "Verifying Signatures"): ``X-PagerDuty-Signature`` holds
one or more comma-separated ``v1=<hex HMAC-SHA256 of the raw body>``, one per
signing secret of the subscription (several during a rotation). The request is
authentic when any ``v1`` signature equals the HMAC under any of our secrets;
every pair is compared in constant time. v3 signatures carry no timestamp, so
a replay of a genuine delivery cannot be told from a retry by its signature:
instead the emitted event's id is derived from PagerDuty's ``event.id``, and a
delivery seen before is a no-op (``"existing"`` in the answer).

Mapping (the seed's ``handle_alert_resolved``): the incident's ``incident_key``
is the dedup key our trigger sent, i.e. the alert's correlation id; the alert
(``alert.create_external`` in that correlation group) gives ``execution_id``.
``resolution_type`` is ``merged`` when PagerDuty says so (``resolve_reason``),
else ``resolved``; ``was_useful`` is ``resolution_type != "false_alarm"``;
``resolution_time_minutes`` runs from the incident's ``created_at`` to the
event's ``occurred_at``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..event import Event
from .guards import Refused
from .settings import Secrets

SOURCE = "external.pagerduty"
MAX_SIGNATURES = 16


def signature(secret: bytes, body: bytes) -> str:
    """The ``v1=<hex>`` signature PagerDuty sends for ``body`` under ``secret``."""
    return "v1=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(header: str | None, body: bytes, secrets: Secrets) -> bool:
    """True if any ``v1`` signature in ``header`` matches ``body`` under any of ``secrets``."""
    if not header or not secrets:
        return False
    given = [s.strip() for s in header.split(",")][:MAX_SIGNATURES]
    ok = False
    for secret in secrets.values:
        expected = signature(secret, body).encode()
        for sig in given:
            # compare_digest on bytes: a non-ASCII header must not raise (and is simply no match).
            if sig.startswith("v1=") and hmac.compare_digest(expected, sig.encode("utf-8", "surrogateescape")):
                ok = True
    return ok


def event_id(pd_event_id: str) -> str:
    """Our event's id for PagerDuty event ``pd_event_id``: the same delivery always maps to the same id."""
    return "pagerduty:" + hashlib.sha256(pd_event_id.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _time(value: Any, what: str) -> float:
    if not isinstance(value, str):
        raise Refused(400, "bad_webhook", f"{what}: expected an ISO 8601 time, got {type(value).__name__}")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Refused(400, "bad_webhook", f"{what}: {value[:40]!r} is not an ISO 8601 time") from None


def resolution(data: dict[str, Any]) -> str:
    reason = data.get("resolve_reason")
    if isinstance(reason, dict) and reason.get("type") == "merge_resolve_reason":
        return "merged"
    return "resolved"


def find_alert(layout: Any, correlation_id: str) -> Event | None:
    """The ``alert.create_external`` of ``correlation_id`` (the newest, if several), from the spool."""
    from ..backends.fs.query import SMALL_SPOOL, newest, open_index
    from ..transport import Query

    index = open_index(layout, SMALL_SPOOL)
    try:
        sel = Query(types=["alert.create_external"], correlation_id=correlation_id)
        found = newest(layout, sel, limit=1, index=index)
    finally:
        if index is not None:
            index.close()
    return found[0].event if found else None


def to_feedback(doc: Any, alert_of: Callable[[str], Event | None]) -> tuple[str, dict[str, Any], str, str] | str:
    """``(id, payload, correlation id, alert id)`` for an ``incident.resolved`` delivery, or why it is ignored.

    ``alert_of`` finds the alert of a correlation id (the backend's: the spool or NATS).

    Raises Refused (400) for a body that is not a v3 webhook at all.
    """
    ev = doc.get("event") if isinstance(doc, dict) else None
    if not isinstance(ev, dict) or not isinstance(ev.get("event_type"), str) or not isinstance(ev.get("id"), str):
        raise Refused(400, "bad_webhook", "$.event: expected a PagerDuty v3 webhook ({'event': {id, event_type, ...}})")
    if ev["event_type"] != "incident.resolved":
        return f"event type {ev['event_type']!r} is not handled (only incident.resolved)"
    data = ev.get("data")
    if not isinstance(data, dict):
        raise Refused(400, "bad_webhook", "$.event.data: expected the incident object")
    key = data.get("incident_key")
    if not isinstance(key, str) or not key:
        return "the incident has no incident_key (not created by poetctl)"
    alert = alert_of(key)
    if alert is None:
        return "no POET alert has this incident's dedup key as its correlation id"
    execution_id = alert.payload.get("execution_id")
    if not isinstance(execution_id, str) or not execution_id:
        return "the alert carries no execution_id"
    resolved_at = _time(ev.get("occurred_at"), "$.event.occurred_at")
    created_at = _time(data.get("created_at"), "$.event.data.created_at")
    kind = resolution(data)
    payload = {
        "execution_id": execution_id,
        "resolution_type": kind,
        "resolution_time_minutes": round(max(0.0, resolved_at - created_at) / 60.0, 3),
        "was_useful": kind != "false_alarm",
    }
    return event_id(ev["id"]), payload, key, alert.id
