"""The seed's ``MLMonitoringEventHandlers``: drift -> alert, feedback -> learning.

Every rule here is the seed's, made deterministic so that a redelivered or
replayed event yields the same follow-ups (which the spool then dedupes):
times come from the event, never from the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..event import Event
from ..router import EventRouter
from .learning import LearningEngine, Pattern

SEVERITY_ORDER = ("low", "medium", "high", "critical")


def calculate_severity(payload: dict[str, Any]) -> str:
    """The seed's ``_calculate_severity``, boundaries included (strict comparisons)."""
    drift_score = payload["drift_score"]
    statistical_significance = payload.get("statistical_significance", 0)
    if drift_score > 0.8 and statistical_significance < 0.01:
        return "critical"
    if drift_score > 0.5 and statistical_significance < 0.05:
        return "high"
    if drift_score > 0.2:
        return "medium"
    return "low"


def calculate_priority(payload: dict[str, Any]) -> str:
    """The seed's ``_calculate_priority``: "medium" until business impact assessment exists."""
    return "medium"


def delivery_priority(investigation_priority: str) -> str:
    """The envelope priority of an alert from its investigation priority: critical/high -> high, low -> low."""
    if investigation_priority in ("critical", "high"):
        return "high"
    return "low" if investigation_priority == "low" else "normal"


def alert_correlation_id(event: Event) -> str:
    """The correlation id of the alert for drift ``event``: its own, else the seed's ``drift-<model>-<time>``."""
    return event.correlation_id or f"drift-{event.payload['model_name']}-{int(event.timestamp)}"


def degradation_severity(percent: float) -> str:
    """Severity of a performance degradation (our rule; the seed leaves it open)."""
    if percent >= 50:
        return "critical"
    if percent >= 25:
        return "high"
    if percent >= 10:
        return "medium"
    return "low"


@dataclass(slots=True)
class HandlerSwitches:
    """Which built-in handlers run; poet.toml ``[builtin_handlers]`` sets each (default on)."""

    drift_detected: bool = True
    human_validation: bool = True
    model_retrained: bool = True
    performance_degraded: bool = True
    alert_resolved: bool = True
    mlflow_validation: bool = True
    function_state: bool = True

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> HandlerSwitches:
        s = cls()
        for k, v in table.items():
            if k not in cls.__dataclass_fields__:
                raise ValueError(
                    f"unknown [builtin_handlers] key {k!r}; expected one of {sorted(cls.__dataclass_fields__)}"
                )
            if not isinstance(v, bool):
                raise ValueError(f"[builtin_handlers] {k} must be true or false")
            setattr(s, k, v)
        return s


class MLMonitoringEventHandlers:
    """Registers the ML-monitoring handlers on a router (the seed's class and method names)."""

    def __init__(
        self,
        event_router: EventRouter,
        learning_engine: LearningEngine,
        switches: HandlerSwitches | None = None,
        feedback_url_base: str = "/poet/feedback",
    ) -> None:
        self.event_router = event_router
        self.learning_engine = learning_engine
        self.switches = switches or HandlerSwitches()
        self.feedback_url_base = feedback_url_base.rstrip("/")
        self.state = event_router.stores.state
        self.feedback = event_router.stores.feedback
        self._register_handlers()

    def _register_handlers(self) -> None:
        sub = self.event_router.subscribe
        s = self.switches
        if s.drift_detected:
            sub("drift.detected", self.handle_drift_detected, name="poet.drift_detected")
        if s.human_validation:
            sub("feedback.human_validation", self.handle_human_feedback, name="poet.human_validation")
        if s.model_retrained:
            sub("feedback.model_retrained", self.handle_retraining_feedback, name="poet.model_retrained")
        if s.performance_degraded:
            sub(
                "monitoring.performance_degraded", self.handle_performance_degradation, name="poet.performance_degraded"
            )
        if s.alert_resolved:
            sub("feedback.alert_resolved", self.handle_alert_resolved, name="poet.alert_resolved")
        if s.mlflow_validation:
            sub("feedback.mlflow_validation", self.handle_mlflow_validation, name="poet.mlflow_validation")

    # -- drift ------------------------------------------------------------------------
    def handle_drift_detected(self, event: Event) -> None:
        """drift.detected -> alert.create_external (severity, priority, feedback_url), then learning."""
        p = event.payload
        severity = calculate_severity(p)
        correlation_id = alert_correlation_id(event)
        priority = calculate_priority(p)
        self.event_router.emit(
            "alert.create_external",
            {
                "alert_type": "model_drift",
                "severity": severity,
                "model_name": p["model_name"],
                "feature_name": p["feature_name"],
                "drift_score": p["drift_score"],
                "feedback_url": f"{self.feedback_url_base}/{event.id}",
                "investigation_priority": priority,
                "execution_id": p["execution_id"],
                "function_name": p["function_name"],
                "drift_event_id": event.id,
            },
            correlation_id=correlation_id,
            priority=delivery_priority(priority),
        )
        self.learning_engine.record_drift_detection(event, severity)

    def handle_performance_degradation(self, event: Event) -> None:
        """monitoring.performance_degraded -> alert.create_external (alert_type performance_degradation)."""
        p = event.payload
        priority = calculate_priority(p)
        self.event_router.emit(
            "alert.create_external",
            {
                "alert_type": "performance_degradation",
                "severity": degradation_severity(p["degradation_percent"]),
                "model_name": p["model_name"],
                "feature_name": p["metric_name"],
                "drift_score": min(1.0, max(0.0, p["degradation_percent"] / 100)),
                "feedback_url": f"{self.feedback_url_base}/{event.id}",
                "investigation_priority": priority,
                "execution_id": p["execution_id"],
                "function_name": p["function_name"],
                "drift_event_id": event.id,
            },
            correlation_id=event.correlation_id or f"perf-{p['model_name']}-{int(event.timestamp)}",
            priority=delivery_priority(priority),
        )

    # -- feedback ------------------------------------------------------------------------
    def _store_feedback(self, event: Event, fn: str | None) -> None:
        self.feedback.add(
            event.id,
            {
                "event_id": event.id,
                "type": event.type,
                "function_name": fn,
                "correlation_id": event.correlation_id,
                "payload": event.payload,
                "received_at": event.timestamp,
            },
        )

    def _after_feedback(self, event: Event, fn: str | None, reason: str) -> None:
        """Detect patterns for ``fn``; emit pattern_detected + regeneration_needed for new ones."""
        self.feedback.mark_processed(event.id)
        if fn is None:
            return
        cur = self.state.current(fn)
        version = cur.get("version") if cur else None
        patterns = self.learning_engine.decide(fn, version, event.timestamp, event.id)
        if not patterns:
            return
        for pat in patterns:
            self.event_router.emit("learning.pattern_detected", pat.payload())
        self.event_router.emit(
            "enhancement.regeneration_needed",
            {
                "function_name": fn,
                "reason": reason,
                "feedback_evidence": {
                    "feedback_event_id": event.id,
                    "payload": event.payload,
                    "patterns": [_evidence(p) for p in patterns],
                },
                "pattern_type": patterns[0].pattern_type,
            },
        )

    def handle_human_feedback(self, event: Event) -> None:
        """feedback.human_validation -> learning engine; regeneration_needed when it says so."""
        p = event.payload
        self._store_feedback(event, p.get("function_name"))
        fn = self.learning_engine.incorporate_human_feedback(
            feedback_id=event.id,
            execution_id=p["execution_id"],
            was_real_drift=p["was_real_drift"],
            confidence=p["confidence"],
            at=event.timestamp,
            context=p.get("business_context"),
            function_name=p.get("function_name"),
        )
        self._after_feedback(event, fn, "human_feedback_pattern")

    def handle_retraining_feedback(self, event: Event) -> None:
        """feedback.model_retrained -> learning; no improvement -> learning.false_positive_detected."""
        p = event.payload
        improvement_confirmed = p["performance_after"] > p["performance_before"]
        self._store_feedback(event, None)
        fn = self.learning_engine.incorporate_retraining_feedback(
            feedback_id=event.id,
            execution_id=p["execution_id"],
            improvement_confirmed=improvement_confirmed,
            performance_delta=p["performance_after"] - p["performance_before"],
            at=event.timestamp,
        )
        if not improvement_confirmed:
            payload: dict[str, Any] = {
                "execution_id": p["execution_id"],
                "model_name": p["model_name"],
                "wasted_cost": p["retraining_cost_usd"],
                "adjustment_needed": "increase_threshold",
            }
            if fn is not None:
                payload["function_name"] = fn
            self.event_router.emit("learning.false_positive_detected", payload)
        self._after_feedback(event, fn, "retraining_feedback_pattern")

    def handle_alert_resolved(self, event: Event) -> None:
        """feedback.alert_resolved: a resolution that was not useful counts as a false positive."""
        p = event.payload
        self._store_feedback(event, None)
        fn = self.learning_engine.incorporate_feedback(
            feedback_id=event.id,
            execution_id=p["execution_id"],
            was_real_drift=bool(p["was_useful"]),
            confidence=0.7,
            kind="alert_resolution",
            at=event.timestamp,
            context=f"resolution={p['resolution_type']}",
        )
        self._after_feedback(event, fn, "alert_resolution_pattern")

    def handle_mlflow_validation(self, event: Event) -> None:
        """feedback.mlflow_validation: false_positive / confirmed_drift tags feed the learning engine."""
        p = event.payload
        self._store_feedback(event, None)
        fn = self.learning_engine.incorporate_feedback(
            feedback_id=event.id,
            execution_id=p["execution_id"],
            was_real_drift=p["validation_type"] == "confirmed_drift",
            confidence=p["confidence"],
            kind="mlflow",
            at=event.timestamp,
            context=f"experiment={p['experiment_id']}",
        )
        self._after_feedback(event, fn, "mlflow_feedback_pattern")


def _evidence(p: Pattern) -> dict[str, Any]:
    return {"pattern_type": p.pattern_type, **p.payload()["evidence"], "detail": p.detail}
