"""The feedback page's logic: which alert a link names, whether it was answered, what an answer emits.

A link names an event id: the alert itself (``alert.create_external``) or, as
the seed's ``feedback_url`` does, the drift event (``drift.detected``,
``monitoring.performance_degraded``) whose alert it is. The answer's id is
derived from the alert's id, so the store itself keeps "one answer per alert":
two submits racing each other commit one event (a second commit of an id is a
no-op, on the spool and on NATS), and a later visit finds the answer by id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from ..event import Event
from ..ids import FUNCTION_NAME_RE, derived_id

ANSWER_HANDLER = "poet.feedback_page"  # names the derived id's "handler": stable, never change it
SOURCE = "poet.feedback_page"
DRIFT_TYPES = ("drift.detected", "monitoring.performance_degraded")
# The built-in handler that turns a drift event into its alert (derived id position 0).
ALERT_HANDLERS = {
    "drift.detected": "poet.drift_detected",
    "monitoring.performance_degraded": "poet.performance_degraded",
}
CONFIDENCE = {"high": 0.9, "medium": 0.7, "low": 0.5}
MAX_REASON = 4000
MAX_MINUTES = 100_000.0


@dataclass(slots=True)
class Alert:
    """An alert as the page shows it."""

    event: Event  # the alert.create_external
    drift: Event | None  # the event that caused it, when known

    @property
    def answer_id(self) -> str:
        return derived_id(self.event.id, self.event.timestamp, ANSWER_HANDLER, 0)

    def field(self, name: str) -> Any:
        v = self.event.payload.get(name)
        if v is None and self.drift is not None:
            v = self.drift.payload.get(name)
        return v


class Lookup(Protocol):
    """Where the page finds events: :class:`~.backend.SpoolBackend` or :class:`~.natsmode.NatsBackend`."""

    def event(self, event_id: str) -> Event | None: ...

    def alert_of(self, correlation_id: str) -> Event | None: ...


def find_alert(lookup: Lookup, event_id: str) -> Alert | None:
    """The alert a link's id names (directly, or through its drift event); None if not stored."""
    ev = lookup.event(event_id)
    if ev is None:
        return None
    if ev.type == "alert.create_external":
        drift = None
        cause = ev.payload.get("drift_event_id") or ev.causation_id
        if isinstance(cause, str):
            drift = lookup.event(cause)
        return Alert(ev, drift)
    if ev.type not in DRIFT_TYPES:
        return None
    # The built-in handler's alert has a derived id: one read. Else search the correlation group.
    direct = lookup.event(derived_id(ev.id, ev.timestamp, ALERT_HANDLERS[ev.type], 0))
    if direct is not None and direct.type == "alert.create_external":
        return Alert(direct, ev)
    if ev.correlation_id:
        alert = lookup.alert_of(ev.correlation_id)
        if alert is not None and ev.id in (alert.causation_id, alert.payload.get("drift_event_id")):
            return Alert(alert, ev)
    return None


@dataclass(slots=True)
class Answer:
    """A submitted form, checked; ``errors`` maps a field to what is wrong with it."""

    answer: str = ""
    reason: str = ""
    minutes: str = ""
    confidence: str = "high"
    errors: dict[str, str] | None = None

    @classmethod
    def from_form(cls, form: dict[str, str]) -> Answer:
        a = cls(
            answer=form.get("answer", ""),
            reason=form.get("reason", "").strip(),
            minutes=form.get("minutes", "").strip(),
            confidence=form.get("confidence", "high"),
        )
        errors: dict[str, str] = {}
        if a.answer not in ("real_drift", "false_alarm"):
            errors["answer"] = "Choose whether this was real drift or a false alarm."
        if not a.reason:
            errors["reason"] = "Say briefly why (what you checked)."
        elif len(a.reason) > MAX_REASON:
            errors["reason"] = f"Keep the reason under {MAX_REASON} characters."
        try:
            m = float(a.minutes)
            if not math.isfinite(m) or not 0 <= m <= MAX_MINUTES:
                raise ValueError
        except ValueError:
            errors["minutes"] = "Give the time you spent as a number of minutes (0 or more)."
        if a.confidence not in CONFIDENCE:
            errors["confidence"] = "Choose how sure you are."
        a.errors = errors or None
        return a

    def payload(self, alert: Alert) -> dict[str, Any] | None:
        """``feedback.human_validation``'s payload, or None when the alert names no execution."""
        execution_id = alert.field("execution_id")
        if not isinstance(execution_id, str) or not execution_id:
            return None
        p: dict[str, Any] = {
            "execution_id": execution_id,
            "validation_type": "drift_accuracy",
            "was_real_drift": self.answer == "real_drift",
            "confidence": CONFIDENCE[self.confidence],
            "reason": self.reason,
            "investigation_time_minutes": float(self.minutes),
        }
        fn = alert.field("function_name")
        if isinstance(fn, str) and FUNCTION_NAME_RE.match(fn):
            p["function_name"] = fn
        return p


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; the first value of each field wins."""
    from urllib.parse import parse_qsl

    out: dict[str, str] = {}
    text = body.decode("utf-8", "replace")
    for k, v in parse_qsl(text, keep_blank_values=True, max_num_fields=50):
        out.setdefault(k, v)
    return out
