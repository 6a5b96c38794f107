"""The seed's ML-monitoring rules, pinned at their boundaries, and the handlers run
through a real router the way the daemon runs them (``set_cause`` + a buffer)."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from poetctl import EventRouter
from poetctl.config import Config
from poetctl.errors import UsageError
from poetctl.event import Event
from poetctl.handlers import register_builtin
from poetctl.handlers.learning import LearningEngine
from poetctl.handlers.ml_monitoring import (
    HandlerSwitches,
    MLMonitoringEventHandlers,
    calculate_severity,
)
from poetctl.schemas import SchemaRegistry

FN = "detect_drift"
MODEL = "customer_churn_model"
T0 = 1_717_000_000.75  # a fixed cause time: follow-up ids and default correlation ids derive from it


# -- helpers --------------------------------------------------------------------------
def drift_payload(
    execution_id: str = "exec-1", score: float = 0.87, p_value: float | None = 0.003, fn: str = FN
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "execution_id": execution_id,
        "function_name": fn,
        "model_name": MODEL,
        "feature_name": "user_activity_score",
        "drift_score": score,
        "method": "ks_test",
        "data_characteristics": {"sample_size": 10000, "data_type": "continuous", "missing_values_percent": 0.0},
    }
    if p_value is not None:
        p["statistical_significance"] = p_value
    return p


def human_payload(execution_id: str, real: bool = False, fn: str | None = FN) -> dict[str, Any]:
    p: dict[str, Any] = {
        "execution_id": execution_id,
        "validation_type": "drift_accuracy",
        "was_real_drift": real,
        "confidence": 0.9,
        "reason": "seasonal traffic dip",
        "investigation_time_minutes": 20,
    }
    if fn is not None:
        p["function_name"] = fn
    return p


def retrained_payload(execution_id: str, before: float, after: float, cost: float = 420.0) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "model_name": MODEL,
        "performance_before": before,
        "performance_after": after,
        "retraining_cost_usd": cost,
        "improvement_confirmed": after > before,
    }


def make_event(
    router: EventRouter,
    event_type: str,
    payload: dict[str, Any],
    *,
    at: float = T0,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Event:
    """A sealed, schema-valid event with a chosen timestamp (not written to the spool)."""
    env: dict[str, Any] = {"type": event_type, "payload": payload, "timestamp": at}
    if correlation_id is not None:
        env["correlation_id"] = correlation_id
    if causation_id is not None:
        env["causation_id"] = causation_id
    ev, _ = router.ingest(env)
    return ev


def deliver(router: EventRouter, event: Event) -> list[Event]:
    """Run every subscription matching ``event`` like daemon/worker.py ``_handle``; return the buffered follow-ups."""
    out: list[Event] = []
    subs = [s for s in router.subscriptions if s.pattern == event.type or fnmatchcase(event.type, s.pattern)]
    assert subs, f"no subscription for {event.type}"
    for sub in subs:
        buffer: list[tuple[Event, bool]] = []
        router.set_cause(event, sub.name, buffer)
        try:
            sub.fn(event)
        finally:
            router.set_cause(None)
        out.extend(ev for ev, _ in buffer)
    return out


@pytest.fixture
def setup(router: EventRouter) -> tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers]:
    """A router on a fresh spool with the ML-monitoring handlers registered (no daemon)."""
    engine = LearningEngine(router.layout)
    handlers = MLMonitoringEventHandlers(router, engine)
    return router, engine, handlers


# -- calculate_severity ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("score", "p_value", "expected"),
    [
        # critical: drift > 0.8 and p < 0.01 (both strict)
        (0.81, 0.009, "critical"),
        (0.8000001, 0.0099999, "critical"),
        (0.8, 0.009, "high"),  # score exactly 0.8 is not > 0.8
        (0.79, 0.001, "high"),
        (0.81, 0.01, "high"),  # p exactly 0.01 is not < 0.01
        (0.81, 0.011, "high"),
        (0.95, 0.0, "critical"),
        # high: drift > 0.5 and p < 0.05
        (0.51, 0.049, "high"),
        (0.5000001, 0.0499999, "high"),
        (0.5, 0.001, "medium"),  # score exactly 0.5
        (0.49, 0.001, "medium"),
        (0.51, 0.05, "medium"),  # p exactly 0.05
        (0.51, 0.051, "medium"),
        (0.81, 0.05, "medium"),  # high score, insignificant p
        # medium: drift > 0.2
        (0.21, 0.9, "medium"),
        (0.2000001, 1.0, "medium"),
        (0.2, 0.001, "low"),  # score exactly 0.2
        (0.19, 0.001, "low"),
        (0.0, 0.0, "low"),
    ],
)
def test_severity_thresholds_are_strict(score: float, p_value: float, expected: str) -> None:
    """calculate_severity follows the seed's strict comparisons at 0.8/0.01, 0.5/0.05 and 0.2."""
    assert calculate_severity({"drift_score": score, "statistical_significance": p_value}) == expected


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.81, "critical"), (0.8, "high"), (0.51, "high"), (0.5, "medium"), (0.21, "medium"), (0.2, "low")],
)
def test_severity_missing_significance_defaults_to_zero(score: float, expected: str) -> None:
    """A payload without statistical_significance is treated as p = 0 (most significant)."""
    assert calculate_severity({"drift_score": score}) == expected


# -- drift.detected -> alert.create_external ---------------------------------------------------
def test_drift_alert_payload(setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers]) -> None:
    """drift.detected yields one alert.create_external carrying the seed's fields plus execution/function/drift ids."""
    router, _, _ = setup
    drift = make_event(router, "drift.detected", drift_payload("exec-9", 0.87, 0.003), correlation_id="drift-alert-123")
    follow = deliver(router, drift)
    assert [e.type for e in follow] == ["alert.create_external"]
    alert = follow[0]
    assert alert.payload == {
        "alert_type": "model_drift",
        "severity": "critical",
        "model_name": MODEL,
        "feature_name": "user_activity_score",
        "drift_score": 0.87,
        "feedback_url": f"/poet/feedback/{drift.id}",
        "investigation_priority": "medium",
        "execution_id": "exec-9",
        "function_name": FN,
        "drift_event_id": drift.id,
    }
    assert alert.causation_id == drift.id
    assert alert.correlation_id == "drift-alert-123"
    assert alert.topic  # routed, sealed and schema-valid (build validated it)
    SchemaRegistry().validate_payload("alert.create_external", alert.payload)


@pytest.mark.parametrize(
    ("score", "p_value", "severity"),
    [(0.81, 0.009, "critical"), (0.8, 0.009, "high"), (0.51, 0.05, "medium"), (0.2, 0.0, "low")],
)
def test_drift_alert_severity_follows_rule(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
    score: float,
    p_value: float,
    severity: str,
) -> None:
    """The alert's severity is calculate_severity of the drift payload, boundaries included."""
    router, _, _ = setup
    (alert,) = deliver(router, make_event(router, "drift.detected", drift_payload("e", score, p_value)))
    assert alert.payload["severity"] == severity
    assert alert.payload["investigation_priority"] == "medium"


def test_drift_alert_default_correlation(setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers]) -> None:
    """Without a correlation id the alert gets drift-<model_name>-<int(event.timestamp)> (event time, not clock)."""
    router, _, _ = setup
    drift = make_event(router, "drift.detected", drift_payload(), at=T0)
    assert drift.correlation_id is None
    (alert,) = deliver(router, drift)
    assert alert.correlation_id == f"drift-{MODEL}-{int(T0)}" == "drift-customer_churn_model-1717000000"
    assert alert.causation_id == drift.id


def test_drift_follow_up_id_is_deterministic(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """Handling the same drift twice yields the same alert id; another drift yields another id."""
    router, engine, _ = setup
    drift = make_event(router, "drift.detected", drift_payload("exec-1"))
    (a1,) = deliver(router, drift)
    snap = engine.snapshot()
    (a2,) = deliver(router, drift)
    assert a1.id == a2.id != drift.id
    assert a1.payload == a2.payload
    assert engine.snapshot() == snap  # recording the same detection twice changes nothing
    other = make_event(router, "drift.detected", drift_payload("exec-2"))
    (a3,) = deliver(router, other)
    assert a3.id != a1.id


def test_drift_is_recorded_for_learning(setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers]) -> None:
    """The drift handler records the detection (by execution id) with its severity and event time."""
    router, engine, _ = setup
    drift = make_event(router, "drift.detected", drift_payload("exec-7", 0.6, 0.04), at=T0)
    deliver(router, drift)
    det = engine.snapshot()["detections"]["exec-7"]
    assert det["event_id"] == drift.id
    assert det["function_name"] == FN
    assert det["severity"] == "high"
    assert det["drift_score"] == 0.6
    assert det["at"] == T0


def test_follow_ups_are_committed_with_causation(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """Committing the buffer writes the alert to pending; committing it again adds nothing (same id)."""
    router, _, _ = setup
    drift = make_event(router, "drift.detected", drift_payload())
    follow = deliver(router, drift)
    added = router.commit_events([(e, True) for e in follow])
    assert added == [True]
    stored = json.loads((router.layout.pending / f"{follow[0].id}.json").read_text())
    assert stored["causation_id"] == drift.id and stored["type"] == "alert.create_external"
    assert router.commit_events([(e, True) for e in deliver(router, drift)]) == [False]


# -- feedback.model_retrained -> learning.false_positive_detected -------------------------------
@pytest.mark.parametrize(
    ("before", "after", "emitted"), [(0.912, 0.909, True), (0.9, 0.9, True), (0.9, 0.9000001, False), (0.8, 0.9, False)]
)
def test_retraining_false_positive_rule(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
    before: float,
    after: float,
    emitted: bool,
) -> None:
    """performance_after <= performance_before emits learning.false_positive_detected; after > before does not."""
    router, _, _ = setup
    deliver(router, make_event(router, "drift.detected", drift_payload("exec-r")))
    retrain = make_event(
        router,
        "feedback.model_retrained",
        retrained_payload("exec-r", before, after, cost=420.5),
        correlation_id="drift-alert-123",
    )
    follow = deliver(router, retrain)
    fps = [e for e in follow if e.type == "learning.false_positive_detected"]
    if not emitted:
        assert fps == []
        return
    (fp,) = fps
    assert fp.payload == {
        "execution_id": "exec-r",
        "model_name": MODEL,
        "wasted_cost": 420.5,
        "adjustment_needed": "increase_threshold",
        "function_name": FN,  # known from the recorded detection
    }
    assert fp.causation_id == retrain.id
    assert fp.correlation_id == "drift-alert-123"


def test_retraining_records_learning_verdict(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """Unhelpful retraining is recorded as a false positive, helpful retraining as real drift."""
    router, engine, _ = setup
    bad = make_event(router, "feedback.model_retrained", retrained_payload("x1", 0.9, 0.9))
    good = make_event(router, "feedback.model_retrained", retrained_payload("x2", 0.8, 0.9))
    deliver(router, bad)
    deliver(router, good)
    fb = engine.snapshot()["feedback"]
    assert fb[bad.id]["was_real_drift"] is False and fb[bad.id]["kind"] == "retraining"
    assert fb[good.id]["was_real_drift"] is True


def test_retraining_for_unknown_execution_has_no_function_name(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """A retraining report about an execution never seen still emits the false positive, without function_name."""
    router, _, _ = setup
    (fp,) = deliver(router, make_event(router, "feedback.model_retrained", retrained_payload("ghost", 0.9, 0.8)))
    assert fp.type == "learning.false_positive_detected"
    assert "function_name" not in fp.payload


# -- feedback.human_validation -> learning, regeneration --------------------------------------
def _drift_and_feedback(
    router: EventRouter, i: int, real: bool = False, score: float = 0.6, at: float = T0
) -> tuple[Event, list[Event]]:
    deliver(router, make_event(router, "drift.detected", drift_payload(f"exec-{i}", score, 0.04), at=at + i))
    fb = make_event(
        router,
        "feedback.human_validation",
        human_payload(f"exec-{i}", real),
        at=at + i + 0.5,
        correlation_id=f"corr-{i}",
    )
    return fb, deliver(router, fb)


def test_human_feedback_regenerates_only_when_pattern_holds(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """Four false alarms emit nothing; the fifth emits pattern_detected + regeneration_needed; the sixth nothing."""
    router, engine, _ = setup
    registry = SchemaRegistry()
    for i in range(4):
        _, follow = _drift_and_feedback(router, i)
        assert follow == [], f"feedback {i + 1} emitted {[e.type for e in follow]}"
    fb5, follow = _drift_and_feedback(router, 4)
    types = [e.type for e in follow]
    assert types[-1] == "enhancement.regeneration_needed"
    patterns = [e for e in follow if e.type == "learning.pattern_detected"]
    assert len(patterns) == len(follow) - 1
    kinds = {p.payload["pattern_type"] for p in patterns}
    assert "threshold_too_sensitive" in kinds
    assert "false_positive_seasonal" in kinds  # all five at the same hour
    for e in follow:
        assert e.causation_id == fb5.id
        assert e.correlation_id == "corr-4"
        registry.validate_payload(e.type, e.payload)
    for p in patterns:
        assert p.payload["affected_functions"] == [FN]
    need = follow[-1]
    assert need.payload["function_name"] == FN
    assert need.payload["reason"] == "human_feedback_pattern"
    assert need.payload["feedback_evidence"]["feedback_event_id"] == fb5.id
    assert need.payload["feedback_evidence"]["payload"] == fb5.payload
    assert need.payload["pattern_type"] == patterns[0].payload["pattern_type"]
    assert len({e.id for e in follow}) == len(follow)
    reported = engine.snapshot()["reported"][FN]
    assert reported["threshold_too_sensitive"] == {"version": "", "by": fb5.id}
    _, follow6 = _drift_and_feedback(router, 5)
    assert follow6 == []


def test_human_feedback_replay_reemits_same_ids(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """Re-handling the feedback that reported a pattern re-emits identical follow-ups (same ids) for dedup."""
    router, engine, _ = setup
    for i in range(4):
        _drift_and_feedback(router, i)
    fb5, first = _drift_and_feedback(router, 4)
    snap = engine.snapshot()
    again = deliver(router, fb5)
    assert [e.id for e in again] == [e.id for e in first] != []
    assert [e.payload for e in again] == [e.payload for e in first]
    assert engine.snapshot() == snap


def test_confirmed_drift_does_not_regenerate(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """Five confirmed, high-scoring drifts are no pattern: no follow-ups."""
    router, _, _ = setup
    for i in range(5):
        _, follow = _drift_and_feedback(router, i, real=True, score=0.9)
        assert follow == []


def test_human_feedback_record_moves_to_processed(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """The feedback record is stored under feedback/processed/<event id>.json and pending stays empty."""
    router, _, _ = setup
    fb, _ = _drift_and_feedback(router, 0)
    layout = router.layout
    rec = json.loads((layout.feedback_processed / f"{fb.id}.json").read_text())
    assert rec["event_id"] == fb.id
    assert rec["function_name"] == FN
    assert rec["payload"] == fb.payload
    assert rec["received_at"] == fb.timestamp
    assert list(layout.feedback_pending.iterdir()) == []


def test_human_feedback_without_function_uses_detection(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
) -> None:
    """Feedback naming no function is attributed through the recorded detection of its execution."""
    router, engine, _ = setup
    deliver(router, make_event(router, "drift.detected", drift_payload("exec-a")))
    fb = make_event(router, "feedback.human_validation", human_payload("exec-a", fn=None))
    deliver(router, fb)
    assert engine.snapshot()["feedback"][fb.id]["function_name"] == FN


# -- alert_resolved / mlflow_validation --------------------------------------------------------
@pytest.mark.parametrize(("useful", "real"), [(False, False), (True, True)])
def test_alert_resolved_usefulness_is_the_verdict(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
    useful: bool,
    real: bool,
) -> None:
    """feedback.alert_resolved with was_useful false is recorded as a false positive (true as real drift)."""
    router, engine, _ = setup
    deliver(router, make_event(router, "drift.detected", drift_payload("exec-z")))
    ev = make_event(
        router,
        "feedback.alert_resolved",
        {
            "execution_id": "exec-z",
            "resolution_type": "false_alarm",
            "resolution_time_minutes": 3,
            "was_useful": useful,
        },
    )
    deliver(router, ev)
    rec = engine.snapshot()["feedback"][ev.id]
    assert rec["was_real_drift"] is real
    assert rec["kind"] == "alert_resolution"
    assert rec["function_name"] == FN


@pytest.mark.parametrize(("validation", "real"), [("false_positive", False), ("confirmed_drift", True)])
def test_mlflow_validation_tag_is_the_verdict(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
    validation: str,
    real: bool,
) -> None:
    """feedback.mlflow_validation false_positive counts as a false positive, confirmed_drift as real drift."""
    router, engine, _ = setup
    deliver(router, make_event(router, "drift.detected", drift_payload("exec-m")))
    ev = make_event(
        router,
        "feedback.mlflow_validation",
        {"execution_id": "exec-m", "validation_type": validation, "experiment_id": "842193", "confidence": 0.8},
    )
    deliver(router, ev)
    rec = engine.snapshot()["feedback"][ev.id]
    assert rec["was_real_drift"] is real
    assert rec["kind"] == "mlflow"


@pytest.mark.parametrize(
    ("event_type", "reason"),
    [
        ("feedback.alert_resolved", "alert_resolution_pattern"),
        ("feedback.mlflow_validation", "mlflow_feedback_pattern"),
    ],
)
def test_external_false_positives_trigger_regeneration(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
    event_type: str,
    reason: str,
) -> None:
    """Five not-useful resolutions (or MLflow false_positive tags) make a pattern and ask for regeneration."""
    router, _, _ = setup
    follow: list[Event] = []
    ev = None
    for i in range(5):
        deliver(router, make_event(router, "drift.detected", drift_payload(f"exec-{i}", 0.6, 0.04), at=T0 + i))
        if event_type == "feedback.alert_resolved":
            payload: dict[str, Any] = {
                "execution_id": f"exec-{i}",
                "resolution_type": "false_alarm",
                "resolution_time_minutes": 3,
                "was_useful": False,
            }
        else:
            payload = {
                "execution_id": f"exec-{i}",
                "validation_type": "false_positive",
                "experiment_id": "1",
                "confidence": 0.8,
            }
        ev = make_event(router, event_type, payload, at=T0 + i + 0.5)
        follow = deliver(router, ev)
        if i < 4:
            assert follow == []
    assert ev is not None
    need = [e for e in follow if e.type == "enhancement.regeneration_needed"]
    assert len(need) == 1
    assert need[0].payload["reason"] == reason
    assert need[0].payload["function_name"] == FN
    assert need[0].causation_id == ev.id


# -- monitoring.performance_degraded -----------------------------------------------------------
@pytest.mark.parametrize(("percent", "severity"), [(7.69, "low"), (10, "medium"), (25, "high"), (50, "critical")])
def test_performance_degradation_alert(
    setup: tuple[EventRouter, LearningEngine, MLMonitoringEventHandlers],
    percent: float,
    severity: str,
) -> None:
    """monitoring.performance_degraded yields alert.create_external with alert_type performance_degradation."""
    router, _, _ = setup
    ev = make_event(
        router,
        "monitoring.performance_degraded",
        {
            "execution_id": "exec-p",
            "function_name": FN,
            "model_name": MODEL,
            "metric_name": "auc",
            "baseline_value": 0.91,
            "current_value": 0.84,
            "degradation_percent": percent,
        },
        at=T0,
    )
    (alert,) = deliver(router, ev)
    assert alert.type == "alert.create_external"
    assert alert.payload["alert_type"] == "performance_degradation"
    assert alert.payload["severity"] == severity
    assert alert.payload["model_name"] == MODEL
    assert alert.payload["feature_name"] == "auc"
    assert alert.payload["feedback_url"] == f"/poet/feedback/{ev.id}"
    assert alert.payload["investigation_priority"] == "medium"
    assert alert.causation_id == ev.id
    assert alert.correlation_id == f"perf-{MODEL}-{int(T0)}"


# -- [builtin_handlers] switches ------------------------------------------------------------
SWITCHED_TYPES = {
    "drift_detected": ["drift.detected"],
    "human_validation": ["feedback.human_validation"],
    "model_retrained": ["feedback.model_retrained"],
    "performance_degraded": ["monitoring.performance_degraded"],
    "alert_resolved": ["feedback.alert_resolved"],
    "mlflow_validation": ["feedback.mlflow_validation"],
    "function_state": ["function.update", "enhancement.regenerated"],
}


def _subscribed(router: EventRouter) -> set[str]:
    return {s.pattern for s in router.subscriptions}


def test_all_builtin_handlers_on_by_default(spool: Path) -> None:
    """With an empty [builtin_handlers] table every built-in handler is subscribed."""
    router = EventRouter(spool=spool, config=Config(spool=spool))
    register_builtin(router)
    assert _subscribed(router) == {t for ts in SWITCHED_TYPES.values() for t in ts}
    assert set(SWITCHED_TYPES) == set(HandlerSwitches.__dataclass_fields__)


@pytest.mark.parametrize("key", sorted(SWITCHED_TYPES))
def test_builtin_handler_switch_turns_one_off(spool: Path, key: str) -> None:
    """Setting one [builtin_handlers] key to false removes exactly that handler's subscriptions."""
    router = EventRouter(spool=spool, config=Config(spool=spool, builtin_handlers={key: False}))
    register_builtin(router)
    subscribed = _subscribed(router)
    for t in SWITCHED_TYPES[key]:
        assert t not in subscribed
    others = {t for k, ts in SWITCHED_TYPES.items() if k != key for t in ts}
    assert others <= subscribed


def test_unknown_builtin_handler_key_is_usage_error(spool: Path) -> None:
    """An unknown [builtin_handlers] key raises UsageError naming the key."""
    router = EventRouter(spool=spool, config=Config(spool=spool, builtin_handlers={"drift_detectd": False}))
    with pytest.raises(UsageError, match="drift_detectd"):
        register_builtin(router)
    assert router.subscriptions == []


def test_non_boolean_builtin_handler_switch_is_usage_error(spool: Path) -> None:
    """A [builtin_handlers] value that is not true/false raises UsageError."""
    router = EventRouter(spool=spool, config=Config(spool=spool, builtin_handlers={"drift_detected": "no"}))
    with pytest.raises(UsageError, match="drift_detected"):
        register_builtin(router)


def test_unknown_learning_key_is_usage_error(spool: Path) -> None:
    """An unknown [learning] key raises UsageError naming the key."""
    router = EventRouter(spool=spool, config=Config(spool=spool, learning={"min_sample": 3}))
    with pytest.raises(UsageError, match="min_sample"):
        register_builtin(router)


def test_daemon_refuses_unknown_builtin_handler_key(tmp_path: Path, spool: Path, run_cli: Any) -> None:
    """`poetctl daemon --once` with an unknown [builtin_handlers] key in poet.toml exits 78 (EX_CONFIG) naming it."""
    cfg = tmp_path / "poet.toml"
    cfg.write_text("[builtin_handlers]\nno_such_handler = false\n")
    proc = run_cli("--spool", spool, "daemon", "--once", "--config", cfg)
    assert proc.returncode == 78, proc.stderr
    assert "no_such_handler" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_daemon_switch_off_leaves_drift_unhandled(tmp_path: Path, spool: Path, run_cli: Any) -> None:
    """With drift_detected = false a real `daemon --once` processes a drift without emitting an alert."""
    cfg = tmp_path / "poet.toml"
    cfg.write_text("[builtin_handlers]\ndrift_detected = false\n")
    router = EventRouter(spool=spool)
    drift_id = router.emit("drift.detected", drift_payload())
    proc = run_cli("--spool", spool, "daemon", "--once", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    assert (router.layout.processed / f"{drift_id}.json").exists()
    assert sorted(p.name for p in router.layout.processed.iterdir()) == [f"{drift_id}.json"]
    assert list(router.layout.pending.iterdir()) == []
