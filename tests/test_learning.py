"""The learning engine on a real temp spool: each pattern threshold at, just below
and just above its boundary, should_regenerate's reporting rules, and payloads that
match the learning.pattern_detected schema."""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers.spool import FakeDrift

from poetctl.handlers.learning import LearningEngine, LearningSettings, Pattern
from poetctl.schemas import SchemaRegistry
from poetctl.spool import SpoolLayout

FN = "detect_drift"
DAY = 86400.0
HOUR = 3600.0
# Monday 2024-01-01 00:00:00 UTC: timestamps below are offsets from it so hour and weekday are known.
MONDAY = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))


def make_engine(tmp_path: Path, **settings: Any) -> LearningEngine:
    layout = SpoolLayout(tmp_path / "spool")
    layout.init()
    return LearningEngine(layout, LearningSettings(**settings))


def detect(
    engine: LearningEngine, ex: str, at: float, score: float = 0.6, fn: str = FN, severity: str = "high"
) -> None:
    engine.record_drift_detection(
        FakeDrift(
            f"drift-{ex}",
            at,
            {
                "execution_id": ex,
                "function_name": fn,
                "model_name": "m",
                "feature_name": "f",
                "drift_score": score,
                "statistical_significance": 0.04,
            },
        ),
        severity,
    )


def feedback(engine: LearningEngine, ex: str, real: bool, at: float, fid: str | None = None) -> str | None:
    return engine.incorporate_human_feedback(
        feedback_id=fid or f"fb-{ex}", execution_id=ex, was_real_drift=real, confidence=0.9, at=at
    )


def validated(engine: LearningEngine, ex: str, real: bool, at: float, score: float = 0.6) -> None:
    """A detection at ``at`` and its verdict a minute later."""
    detect(engine, ex, at, score)
    feedback(engine, ex, real, at + 60)


def kinds(engine: LearningEngine, now: float) -> dict[str, Pattern]:
    return {p.pattern_type: p for p in engine.detect_patterns(FN, now=now)}


def spread(i: int) -> float:
    """The i-th of several times with distinct hours and weekdays cycling (no concentration)."""
    return MONDAY + i * DAY + (i % 24) * HOUR + 17 * 60


NOW = MONDAY + 20 * DAY  # later than every sample, well within the 30-day window


# -- threshold_too_sensitive ------------------------------------------------------------------
@pytest.mark.parametrize(("n", "expected"), [(4, False), (5, True), (6, True)])
def test_threshold_too_sensitive_needs_min_samples(tmp_path: Path, n: int, expected: bool) -> None:
    """threshold_too_sensitive needs at least min_samples (5) validated detections."""
    engine = make_engine(tmp_path)
    for i in range(n):
        validated(engine, f"e{i}", False, spread(i))
    assert ("threshold_too_sensitive" in kinds(engine, NOW)) is expected


@pytest.mark.parametrize(("min_samples", "n", "expected"), [(3, 2, False), (3, 3, True), (3, 4, True)])
def test_min_samples_is_configurable(tmp_path: Path, min_samples: int, n: int, expected: bool) -> None:
    """A configured min_samples moves the boundary."""
    engine = make_engine(tmp_path, min_samples=min_samples)
    for i in range(n):
        validated(engine, f"e{i}", False, spread(i))
    assert ("threshold_too_sensitive" in kinds(engine, NOW)) is expected


@pytest.mark.parametrize(
    ("threshold", "fps", "expected"),
    [(0.5, 4, False), (0.5, 5, False), (0.5, 6, True), (0.3, 2, False), (0.3, 3, False), (0.3, 4, True)],
)
def test_false_positive_rate_threshold_is_strict(tmp_path: Path, threshold: float, fps: int, expected: bool) -> None:
    """The false-positive rate must be strictly above fp_rate_threshold (5 of 10 at 0.5 is not enough)."""
    engine = make_engine(tmp_path, fp_rate_threshold=threshold)
    for i in range(10):
        validated(engine, f"e{i}", i >= fps, spread(i), score=0.9)
    got = kinds(engine, NOW)
    assert ("threshold_too_sensitive" in got) is expected
    if expected:
        p = got["threshold_too_sensitive"]
        assert p.sample_size == 10
        assert p.correlation_strength == pytest.approx(fps / 10)
        assert p.detail == {"false_positive_rate": pytest.approx(fps / 10), "false_positives": fps}


def test_latest_feedback_per_execution_wins(tmp_path: Path) -> None:
    """A later verdict on the same execution replaces the earlier one (one validation per execution)."""
    engine = make_engine(tmp_path)
    for i in range(5):
        validated(engine, f"e{i}", False, spread(i))
    assert "threshold_too_sensitive" in kinds(engine, NOW)
    for i in range(3):
        feedback(engine, f"e{i}", True, spread(i) + HOUR, fid=f"late-{i}")
    got = kinds(engine, NOW)
    assert "threshold_too_sensitive" not in got  # 2 of 5 false positives now
    assert len(engine.validations(engine.snapshot(), FN, NOW)) == 5


# -- false_positive_seasonal -------------------------------------------------------------------
def _seasonal_by_hour(engine: LearningEngine, concentrated: int, total: int = 10) -> None:
    """``concentrated`` false positives detected at 09:xx UTC on different days, the rest at distinct hours."""
    for i in range(total):
        hour = 9 if i < concentrated else 10 + i
        validated(engine, f"e{i}", False, MONDAY + i * DAY + hour * HOUR + 5 * 60)


@pytest.mark.parametrize(("concentrated", "expected"), [(5, False), (6, True), (7, True)])
def test_seasonal_hour_concentration_boundary(tmp_path: Path, concentrated: int, expected: bool) -> None:
    """false_positive_seasonal needs a share >= seasonal_concentration (0.6) of false positives in one UTC hour."""
    engine = make_engine(tmp_path)
    _seasonal_by_hour(engine, concentrated)
    got = kinds(engine, NOW)
    assert ("false_positive_seasonal" in got) is expected
    if expected:
        p = got["false_positive_seasonal"]
        assert p.detail == {"by": "hour", "bucket": 9}
        assert p.sample_size == 10
        assert p.correlation_strength == pytest.approx(concentrated / 10)
        assert "09:00-09:59 UTC" in p.recommended_action


@pytest.mark.parametrize(
    ("concentration", "concentrated", "expected"), [(0.5, 4, False), (0.5, 5, True), (0.8, 7, False), (0.8, 8, True)]
)
def test_seasonal_concentration_is_configurable(
    tmp_path: Path, concentration: float, concentrated: int, expected: bool
) -> None:
    """A configured seasonal_concentration moves the (inclusive) boundary."""
    engine = make_engine(tmp_path, seasonal_concentration=concentration)
    _seasonal_by_hour(engine, concentrated)
    assert ("false_positive_seasonal" in kinds(engine, NOW)) is expected


@pytest.mark.parametrize(("mondays", "expected"), [(5, False), (6, True), (7, True)])
def test_seasonal_weekday_concentration_boundary(tmp_path: Path, mondays: int, expected: bool) -> None:
    """A share >= 0.6 of false positives on one weekday (at distinct hours) is a seasonal pattern by weekday."""
    engine = make_engine(tmp_path, window_days=100)
    other_day = 1
    for i in range(10):
        if i < mondays:
            at = MONDAY + i * 7 * DAY + i * HOUR
        else:
            at = MONDAY + other_day * DAY + i * HOUR
            other_day += 1
        validated(engine, f"e{i}", False, at)
    got = kinds(engine, MONDAY + 70 * DAY)
    assert ("false_positive_seasonal" in got) is expected
    if expected:
        p = got["false_positive_seasonal"]
        assert p.detail == {"by": "weekday", "bucket": 0}
        assert "Monday" in p.recommended_action


@pytest.mark.parametrize(("fps", "expected"), [(4, False), (5, True), (6, True)])
def test_seasonal_needs_min_samples_false_positives(tmp_path: Path, fps: int, expected: bool) -> None:
    """Even fully concentrated, fewer than min_samples false positives are no seasonal pattern."""
    engine = make_engine(tmp_path)
    for i in range(fps):
        validated(engine, f"e{i}", False, MONDAY + i * DAY + 9 * HOUR)
    for i in range(fps, 12):  # plenty of real drifts so the sample size is not what limits
        validated(engine, f"e{i}", True, spread(i), score=0.9)
    assert ("false_positive_seasonal" in kinds(engine, NOW)) is expected


def test_seasonal_uses_detection_time_not_feedback_time(tmp_path: Path) -> None:
    """Seasonality is judged by when the drift was detected, not when someone answered."""
    engine = make_engine(tmp_path)
    for i in range(5):
        at = MONDAY + i * DAY + 9 * HOUR
        detect(engine, f"e{i}", at)
        feedback(engine, f"e{i}", False, at + (i + 1) * 5 * HOUR)  # answered at scattered hours and days
    p = kinds(engine, NOW)["false_positive_seasonal"]
    assert p.detail == {"by": "hour", "bucket": 9}
    assert p.correlation_strength == 1.0


# -- missing_edge_case --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("threshold", "score", "expected"),
    [(0.5, 0.49, True), (0.5, 0.5, True), (0.5, 0.51, False), (0.3, 0.3, True), (0.3, 0.31, False)],
)
def test_low_score_threshold_is_inclusive(tmp_path: Path, threshold: float, score: float, expected: bool) -> None:
    """Confirmed drifts scored at most low_score_threshold count as edge cases; above it they do not."""
    engine = make_engine(tmp_path, low_score_threshold=threshold)
    for i in range(2):
        validated(engine, f"e{i}", True, spread(i), score=score)
    assert ("missing_edge_case" in kinds(engine, NOW)) is expected


@pytest.mark.parametrize(("edges", "expected"), [(1, False), (2, True), (3, True)])
def test_missing_edge_case_needs_min_edge_cases(tmp_path: Path, edges: int, expected: bool) -> None:
    """missing_edge_case needs at least min_edge_cases (2) under-scored confirmed drifts."""
    engine = make_engine(tmp_path)
    for i in range(edges):
        validated(engine, f"low{i}", True, spread(i), score=0.3)
    for i in range(2):
        validated(engine, f"high{i}", True, spread(10 + i), score=0.9)
    got = kinds(engine, NOW)
    assert ("missing_edge_case" in got) is expected
    if expected:
        p = got["missing_edge_case"]
        assert p.sample_size == edges
        assert p.correlation_strength == pytest.approx(edges / (edges + 2))
        assert p.business_impact == "high"


@pytest.mark.parametrize(("n", "expected"), [(2, False), (3, True), (4, True)])
def test_min_edge_cases_is_configurable(tmp_path: Path, n: int, expected: bool) -> None:
    """A configured min_edge_cases moves the boundary."""
    engine = make_engine(tmp_path, min_edge_cases=3)
    for i in range(n):
        validated(engine, f"e{i}", True, spread(i), score=0.2)
    assert ("missing_edge_case" in kinds(engine, NOW)) is expected


def test_false_positives_are_not_edge_cases(tmp_path: Path) -> None:
    """Low-scored detections that were false alarms are not missing edge cases."""
    engine = make_engine(tmp_path)
    for i in range(3):
        validated(engine, f"e{i}", False, spread(i), score=0.1)
    assert "missing_edge_case" not in kinds(engine, NOW)


# -- window_days ------------------------------------------------------------------------------
@pytest.mark.parametrize("window_days", [30.0, 7.0])
@pytest.mark.parametrize(("offset", "expected"), [(-1.0, False), (0.0, True), (1.0, True)])
def test_window_days_boundary(tmp_path: Path, window_days: float, offset: float, expected: bool) -> None:
    """Feedback exactly window_days old still counts; one second older does not."""
    engine = make_engine(tmp_path, window_days=window_days)
    now = MONDAY + 60 * DAY
    horizon = now - window_days * DAY
    for i in range(4):
        validated(engine, f"e{i}", False, now - (i + 1) * HOUR * 3)
    detect(engine, "edge", horizon + offset - 60)
    feedback(engine, "edge", False, horizon + offset)
    assert ("threshold_too_sensitive" in kinds(engine, now)) is expected


# -- should_regenerate / mark_reported --------------------------------------------------------------
def _five_false_alarms(engine: LearningEngine) -> None:
    for i in range(5):
        validated(engine, f"e{i}", False, spread(i))


def test_should_regenerate_when_pattern_unreported(tmp_path: Path) -> None:
    """should_regenerate returns the holding patterns while none was reported for the version."""
    engine = make_engine(tmp_path)
    assert engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c0") == []
    _five_false_alarms(engine)
    got = engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c1")
    assert [p.pattern_type for p in got] == ["threshold_too_sensitive"]


def test_should_regenerate_false_after_mark_reported(tmp_path: Path) -> None:
    """After mark_reported for a version, another cause gets nothing for that version."""
    engine = make_engine(tmp_path)
    _five_false_alarms(engine)
    pats = engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c1")
    engine.mark_reported(FN, pats, "1.0.0", cause_id="c1")
    assert engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c2") == []
    assert engine.should_regenerate(FN, "1.0.0", now=NOW) == []


def test_should_regenerate_true_again_for_same_cause(tmp_path: Path) -> None:
    """The cause that reported a pattern gets it again (retry/replay safety), with identical payloads."""
    engine = make_engine(tmp_path)
    _five_false_alarms(engine)
    pats = engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c1")
    engine.mark_reported(FN, pats, "1.0.0", cause_id="c1")
    again = engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c1")
    assert [p.payload() for p in again] == [p.payload() for p in pats]
    snap = engine.snapshot()
    engine.mark_reported(FN, again, "1.0.0", cause_id="c1")
    assert engine.snapshot() == snap


def test_should_regenerate_true_after_new_version(tmp_path: Path) -> None:
    """A new function version makes a still-holding pattern reportable again."""
    engine = make_engine(tmp_path)
    _five_false_alarms(engine)
    pats = engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c1")
    engine.mark_reported(FN, pats, "1.0.0", cause_id="c1")
    got = engine.should_regenerate(FN, "1.1.0", now=NOW, cause_id="c2")
    assert [p.pattern_type for p in got] == ["threshold_too_sensitive"]
    engine.mark_reported(FN, got, "1.1.0", cause_id="c2")
    assert engine.should_regenerate(FN, "1.1.0", now=NOW, cause_id="c3") == []
    assert engine.snapshot()["reported"][FN]["threshold_too_sensitive"] == {"version": "1.1.0", "by": "c2"}


def test_should_regenerate_no_version_counts_as_one_version(tmp_path: Path) -> None:
    """A function without state (version None) is reported once, like any version."""
    engine = make_engine(tmp_path)
    _five_false_alarms(engine)
    pats = engine.should_regenerate(FN, None, now=NOW, cause_id="c1")
    assert pats
    engine.mark_reported(FN, pats, None, cause_id="c1")
    assert engine.should_regenerate(FN, None, now=NOW, cause_id="c2") == []
    assert engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c2") != []


def test_new_pattern_type_is_reportable_after_another_was_reported(tmp_path: Path) -> None:
    """Reporting one pattern type leaves a different, newly holding type reportable for the same version."""
    engine = make_engine(tmp_path)
    for i in range(5):
        validated(engine, f"e{i}", False, spread(i))
    pats = engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c1")
    engine.mark_reported(FN, pats, "1.0.0", cause_id="c1")
    for i in range(5, 9):  # edge cases: real drift scored low; the fp rate stays > 0.5 (5 of 9)
        validated(engine, f"e{i}", True, spread(i), score=0.3)
    got = engine.should_regenerate(FN, "1.0.0", now=NOW, cause_id="c2")
    assert [p.pattern_type for p in got] == ["missing_edge_case"]


def test_should_regenerate_without_function_is_false(tmp_path: Path) -> None:
    """Feedback that names no known function never asks for regeneration."""
    engine = make_engine(tmp_path)
    _five_false_alarms(engine)
    assert engine.should_regenerate(None, "1.0.0", now=NOW) == []
    assert engine.should_regenerate("other_fn", "1.0.0", now=NOW) == []


def test_unattributable_feedback_returns_none(tmp_path: Path) -> None:
    """Feedback about an execution never seen (and naming no function) is kept but attributed to nothing."""
    engine = make_engine(tmp_path)
    assert feedback(engine, "ghost", False, NOW) is None
    assert engine.snapshot()["feedback"]["fb-ghost"]["function_name"] is None


# -- payloads -----------------------------------------------------------------------------
def test_all_pattern_payloads_match_schema(tmp_path: Path) -> None:
    """Each pattern type's payload validates against learning.pattern_detected, evidence fields included."""
    engine = make_engine(tmp_path)
    for i in range(6):
        validated(engine, f"fp{i}", False, MONDAY + i * DAY + 9 * HOUR)
    for i in range(2):
        validated(engine, f"low{i}", True, spread(10 + i), score=0.25)
    got = kinds(engine, NOW)
    assert set(got) == {"threshold_too_sensitive", "false_positive_seasonal", "missing_edge_case"}
    registry = SchemaRegistry()
    for p in got.values():
        payload = p.payload()
        registry.validate_payload("learning.pattern_detected", payload)
        ev = payload["evidence"]
        assert ev == {
            "sample_size": p.sample_size,
            "correlation_strength": round(p.correlation_strength, 4),
            "business_impact": p.business_impact,
        }
        assert isinstance(ev["sample_size"], int)
        assert payload["affected_functions"] == [FN]
        assert 0 <= payload["confidence"] <= 1
        assert payload["recommended_action"]
    tts = got["threshold_too_sensitive"].payload()
    assert tts["evidence"] == {"sample_size": 8, "correlation_strength": 0.75, "business_impact": "medium"}
    seasonal = got["false_positive_seasonal"].payload()
    assert seasonal["evidence"] == {"sample_size": 6, "correlation_strength": 1.0, "business_impact": "high"}
    edge = got["missing_edge_case"].payload()
    assert edge["evidence"] == {"sample_size": 2, "correlation_strength": 1.0, "business_impact": "high"}


@pytest.mark.parametrize(
    ("fps", "n", "impact"), [(11, 19, "low"), (6, 10, "medium"), (15, 19, "medium"), (8, 10, "high"), (10, 10, "high")]
)
def test_business_impact_follows_rate(tmp_path: Path, fps: int, n: int, impact: str) -> None:
    """business_impact is high from a 0.8 false-positive rate, medium from 0.6, else low."""
    engine = make_engine(tmp_path)
    for i in range(n):
        validated(engine, f"e{i}", i >= fps, spread(i), score=0.9)
    assert kinds(engine, NOW)["threshold_too_sensitive"].business_impact == impact


# -- storage -------------------------------------------------------------------------------
def test_recording_twice_gives_same_state(tmp_path: Path) -> None:
    """Feeding the same detections and feedback again leaves learning.json unchanged."""
    engine = make_engine(tmp_path)
    _five_false_alarms(engine)
    snap = engine.snapshot()
    raw = (engine.store.layout.state / "learning.json").read_bytes()
    _five_false_alarms(engine)
    assert engine.snapshot() == snap
    assert (engine.store.layout.state / "learning.json").read_bytes() == raw


def test_state_survives_a_new_engine(tmp_path: Path) -> None:
    """A second engine on the same spool sees what the first recorded (state is on disk)."""
    engine = make_engine(tmp_path)
    _five_false_alarms(engine)
    other = LearningEngine(engine.store.layout)
    assert other.snapshot() == engine.snapshot()
    assert "threshold_too_sensitive" in {p.pattern_type for p in other.detect_patterns(FN, now=NOW)}


def test_detections_are_capped_per_function(tmp_path: Path) -> None:
    """max_detections_per_function keeps only the newest detections of a function."""
    engine = make_engine(tmp_path, max_detections_per_function=3)
    for i in range(5):
        detect(engine, f"e{i}", MONDAY + i)
    detect(engine, "x", MONDAY, fn="other_fn")
    det = engine.snapshot()["detections"]
    assert sorted(k for k, d in det.items() if d["function_name"] == FN) == ["e2", "e3", "e4"]
    assert "x" in det


def test_settings_from_config(tmp_path: Path) -> None:
    """LearningSettings.from_config coerces values to the field types and refuses unknown keys."""
    s = LearningSettings.from_config({"min_samples": 3.0, "fp_rate_threshold": 1, "window_days": 7})
    assert s.min_samples == 3 and isinstance(s.min_samples, int)
    assert s.fp_rate_threshold == 1.0 and isinstance(s.fp_rate_threshold, float)
    assert s.window_days == 7.0
    with pytest.raises(ValueError, match="min_sampels"):
        LearningSettings.from_config({"min_sampels": 3})


def test_detect_patterns_defaults_now_to_clock(tmp_path: Path) -> None:
    """Without ``now``, the window is anchored at the current time (old feedback falls out)."""
    engine = make_engine(tmp_path)
    _five_false_alarms(engine)  # in January 2024: more than 30 days before today
    assert time.time() - NOW > 30 * DAY
    assert engine.detect_patterns(FN) == []
    assert engine.detect_patterns(FN, now=NOW) != []
