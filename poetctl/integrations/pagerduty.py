"""PagerDuty Events API v2: ``alert.create_external`` -> trigger, ``feedback.alert_resolved`` -> resolve.

The trigger's ``dedup_key`` is the alert's correlation id, so a redelivered
alert (a retry, a replay) updates the same PagerDuty alert instead of paging
twice, and the resolve for that correlation closes it. PagerDuty's answer
becomes ``alert.created_external`` (the seed's event; ``external_id`` is the
dedup key PagerDuty returned), a follow-up of the alert, so it carries the
alert's correlation id and is deduplicated on redelivery too.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..cloudevents import format_time
from ..event import Event
from ..ids import EVENT_ID_RE
from ..router import EventRouter
from .http import Outbound
from .settings import FeedbackLinks, Integration

# The seed's severities (MLMonitoringEventHandlers._calculate_severity) -> PagerDuty's four.
SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
SOURCE = "external.pagerduty"


def alert_link_id(event: Event) -> str:
    """The id the alert's feedback page is keyed by: the last part of its ``feedback_url`` (the seed's
    ``/poet/feedback/<drift event id>``), else ``drift_event_id``, else the alert's own id."""
    p = event.payload
    tail = str(p.get("feedback_url", "")).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    for candidate in (tail, p.get("drift_event_id")):
        if isinstance(candidate, str) and EVENT_ID_RE.match(candidate):
            return candidate
    return event.id


def summary(p: dict[str, Any]) -> str:
    """One line naming the alert type, model, feature, score and severity."""
    kind = str(p.get("alert_type", "alert")).replace("_", " ")
    text = (
        f"{kind.capitalize()}: model {p.get('model_name')}, feature {p.get('feature_name')}, "
        f"score {float(p.get('drift_score', 0)):.3f} ({p.get('severity')})"
    )
    return text[:MAX_SUMMARY]


class PagerDutyIntegration:
    """Subscribes the trigger and resolve handlers of integration ``it`` on ``router``."""

    def __init__(self, router: EventRouter, it: Integration, outbound: Outbound, links: FeedbackLinks | None) -> None:
        self.router = router
        self.it = it
        self.outbound = outbound
        self.links = links
        self.url = it.url("url")
        self.routing_key = it.secret("routing_key" if it.get("routing_key") is not None else "api_key")

    def register(self) -> None:
        n = self.it.name
        self.router.subscribe("alert.create_external", self.create_pagerduty_incident, name=f"poet.pagerduty.{n}")
        self.router.subscribe("feedback.alert_resolved", self.resolve_incident, name=f"poet.pagerduty.{n}.resolve")

    # -- trigger ----------------------------------------------------------------------------
    def trigger_body(self, event: Event) -> dict[str, Any]:
        """The Events v2 ``trigger`` for alert ``event`` (routing_key included)."""
        p = event.payload
        feedback = self._feedback_url(event)
        details: dict[str, Any] = {
            "poet_execution_id": p.get("execution_id"),
            "drift_score": p.get("drift_score"),
            "feedback_url": feedback,
            "severity": p.get("severity"),
            "investigation_priority": p.get("investigation_priority"),
            "model_name": p.get("model_name"),
            "feature_name": p.get("feature_name"),
            "function_name": p.get("function_name"),
            "poet_alert_event_id": event.id,
            "correlation_id": event.correlation_id,
        }
        payload: dict[str, Any] = {
            "summary": summary(p),
            "source": str(self.it.get("source") or p.get("model_name"))[:255],
            "severity": SEVERITY.get(str(p.get("severity")), "warning"),
            "timestamp": format_time(event.timestamp),
            "component": str(p.get("feature_name"))[:255],
            "class": str(p.get("alert_type", "alert"))[:255],
            "custom_details": {k: v for k, v in details.items() if v is not None},
        }
        if p.get("function_name"):
            payload["group"] = str(p["function_name"])
        body: dict[str, Any] = {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": self.dedup_key(event),
            "payload": payload,
            "client": str(self.it.get("client") or "poetctl"),
        }
        if feedback.startswith(("http://", "https://")):
            body["links"] = [{"href": feedback, "text": "Was this real drift? Answer on the feedback page"}]
            if self.links is not None:
                body["client_url"] = self.links.base_url
        return body

    def dedup_key(self, event: Event) -> str:
        return (event.correlation_id or event.id)[:MAX_DEDUP_KEY]

    def _feedback_url(self, event: Event) -> str:
        if self.links is None:
            return str(event.payload.get("feedback_url", ""))
        # Signed at the alert's time, not now: a redelivery sends the same link, valid ttl from the alert.
        return self.links.url(alert_link_id(event), now=event.timestamp)

    def create_pagerduty_incident(self, event: Event) -> None:
        """The seed's handler name: trigger, then emit ``alert.created_external`` with the dedup key."""
        answer = self.outbound.request("POST", self.url, body=orjson.dumps(self.trigger_body(event)), headers=_JSON)
        doc = answer.json()
        key = doc.get("dedup_key") if isinstance(doc, dict) else None
        if not isinstance(key, str) or not key:
            key = self.dedup_key(event)
        self.router.emit(
            "alert.created_external",
            {"external_id": key[:256], "poet_execution_id": event.payload.get("execution_id"), "system": "pagerduty"},
            source=SOURCE,
            correlation_id=event.correlation_id,
        )

    # -- resolve ----------------------------------------------------------------------------
    def resolve_incident(self, event: Event) -> None:
        """``feedback.alert_resolved`` for a correlation -> ``resolve`` of the alert with that dedup key.

        Nothing is sent without a correlation id (there is no alert to name) or
        when PagerDuty itself reported the resolution (source external.pagerduty).
        """
        if not event.correlation_id or event.source == SOURCE:
            return
        body = {"routing_key": self.routing_key, "event_action": "resolve", "dedup_key": self.dedup_key(event)}
        self.outbound.request("POST", self.url, body=orjson.dumps(body), headers=_JSON)

    def check(self) -> str:
        """`integrations check`: a resolve for a key no alert has is accepted and changes nothing."""
        body = {"routing_key": self.routing_key, "event_action": "resolve", "dedup_key": "poetctl-integrations-check"}
        self.outbound.request("POST", self.url, body=orjson.dumps(body), headers=_JSON, use_breaker=False)
        return "accepted a no-op resolve"


_JSON = {"content-type": "application/json"}
