"""The seed's ML-monitoring workflow end to end on a real daemon process: drift ->
alert -> human feedback -> learning -> regeneration request, every event's type,
payload and causation link; the demo script; and replay without duplicates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv

from poetctl import EventRouter
from poetctl.chain import Node, connected, iter_events, render_tree
from poetctl.config import Config
from poetctl.event import Event
from poetctl.handlers.learning import LearningEngine
from poetctl.handlers.ml_monitoring import calculate_severity
from poetctl.schemas import SchemaRegistry
from poetctl.spool import SpoolLayout

FN = "detect_drift"
MODEL = "customer_churn_model"
FEATURE = "user_activity_score"
CORRELATION = "drift-alert-123"
DEADLINE = 90.0  # only bounds how long a broken daemon can hang a test
EARLIER = [(0.62, 0.03), (0.58, 0.04), (0.66, 0.02), (0.71, 0.01)]
SEED_DRIFT = (0.87, 0.003)


# -- helpers ------------------------------------------------------------------------------
def wait_for(cond: Callable[[], Any], what: str, timeout: float = DEADLINE, log: Path | None = None) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            extra = f"\ndaemon log:\n{log.read_text(errors='replace')}" if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(0.05)


def events_by_id(layout: SpoolLayout) -> dict[str, tuple[str, Event]]:
    return {e.id: (state, e) for state, e in iter_events(layout)}


def caused_by(layout: SpoolLayout, event_type: str, cause: str) -> list[Event]:
    return [e for _, e in iter_events(layout) if e.type == event_type and e.causation_id == cause]


def json_names(d: Path) -> set[str]:
    try:
        return {n for n in os.listdir(d) if n.endswith(".json")}
    except FileNotFoundError:
        return set()


def idle(layout: SpoolLayout) -> bool:
    """Nothing pending and nothing claimed by any daemon."""
    return not json_names(layout.pending) and not any(json_names(d) for d in layout.inflight_dirs())


def event_files(layout: SpoolLayout) -> dict[str, set[str]]:
    """Event file names per state directory (dead and corrupt included)."""
    out = {s: json_names(getattr(layout, s)) for s in ("pending", "processed", "dead", "corrupt")}
    out["inflight"] = {n for d in layout.inflight_dirs() for n in json_names(d)}
    return out


def drift_payload(execution_id: str, score: float, p_value: float) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "function_name": FN,
        "model_name": MODEL,
        "feature_name": FEATURE,
        "drift_score": score,
        "method": "ks_test",
        "statistical_significance": p_value,
        "data_characteristics": {"sample_size": 10000, "data_type": "continuous", "missing_values_percent": 0.0},
    }


def false_alarm(router: EventRouter, execution_id: str, alert: Event) -> str:
    return router.emit(
        "feedback.human_validation",
        {
            "execution_id": execution_id,
            "validation_type": "drift_accuracy",
            "was_real_drift": False,
            "confidence": 0.9,
            "reason": "seasonal traffic dip after the weekly campaign",
            "business_context": "weekly marketing campaign",
            "investigation_time_minutes": 25,
            "function_name": FN,
        },
        source="external.pagerduty",
        correlation_id=alert.correlation_id,
        causation_id=alert.id,
    )


def start_daemon(spool: Path, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cli_argv("--spool", spool, "daemon", "--rescan-interval", "0.5"),
            env=clean_env(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=DEADLINE)
        raise AssertionError("daemon did not exit after SIGTERM") from None


def daemon_once(spool: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv("--spool", spool, "daemon", "--once"),
        env=clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def flatten(node: Node) -> list[Node]:
    out = [node]
    for c in node.children:
        out.extend(flatten(c))
    return out


@dataclass
class Chain:
    """What the chain run emitted (inputs) and how the daemon ended."""

    spool: Path
    cwd: Path
    drifts: list[str] = field(default_factory=list)
    executions: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    humans: list[str] = field(default_factory=list)
    retrain: str = ""
    exit_code: int | None = None
    log: str = ""


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """Run the seed's story once on a real `poetctl daemon` (built-in handlers on); read-only afterwards."""
    base = tmp_path_factory.mktemp("chain")
    spool = base / "spool"
    router = EventRouter(spool=spool, config=Config(spool=spool))
    layout = router.layout
    layout.init()
    log = base / "daemon.log"
    proc = start_daemon(spool, base, log)
    run = Chain(spool, base)
    try:
        for i, (score, p) in enumerate([*EARLIER, SEED_DRIFT]):
            ex = f"exec-{i + 1:03d}"
            corr = CORRELATION if i == len(EARLIER) else None
            drift = router.emit(
                "drift.detected", drift_payload(ex, score, p), source="poet.generator", correlation_id=corr
            )
            alerts = wait_for(partial(caused_by, layout, "alert.create_external", drift), f"alert of {drift}", log=log)
            alert = alerts[0]
            fid = false_alarm(router, ex, alert)
            run.drifts.append(drift)
            run.executions.append(ex)
            run.alerts.append(alert.id)
            run.humans.append(fid)
        # Let the fifth verdict be handled before the retraining report arrives: the two have different
        # partition keys (function_name vs correlation_id), so without this wait either may be handled
        # first and the pattern would be credited to whichever wins (see the report on the demo's race).
        wait_for(lambda: (layout.processed / f"{run.humans[-1]}.json").exists(), "the fifth feedback", log=log)
        run.retrain = router.emit(
            "feedback.model_retrained",
            {
                "execution_id": run.executions[-1],
                "model_name": MODEL,
                "performance_before": 0.912,
                "performance_after": 0.909,
                "retraining_cost_usd": 420.0,
                "improvement_confirmed": False,
            },
            source="external.mlflow",
            correlation_id=CORRELATION,
            causation_id=run.alerts[-1],
        )
        wait_for(
            lambda: (layout.processed / f"{run.retrain}.json").exists() and idle(layout),
            "every event processed",
            log=log,
        )
    finally:
        run.exit_code = stop_daemon(proc)
        run.log = log.read_text(errors="replace")
    return run


# -- the chain -----------------------------------------------------------------------------
def test_daemon_stops_cleanly_on_sigterm(chain: Chain) -> None:
    """The daemon exits 0 on SIGTERM and reports no dead, expired or corrupt events."""
    assert chain.exit_code == 0, chain.log
    assert "dead=0 expired=0 corrupt=0" in chain.log


def test_chain_emits_exactly_the_expected_events(chain: Chain) -> None:
    """Inputs plus follow-ups are all there is: 5 alerts, 1 false positive, 2 patterns, 1 regeneration request."""
    layout = SpoolLayout(chain.spool)
    events = {eid: se for eid, se in events_by_id(layout).items() if se[1].type != "system.health"}
    assert {s for s, _ in events.values()} == {"processed"}
    counts: dict[str, int] = {}
    for _, e in events.values():
        counts[e.type] = counts.get(e.type, 0) + 1
    assert counts == {
        "drift.detected": 5,
        "alert.create_external": 5,
        "feedback.human_validation": 5,
        "feedback.model_retrained": 1,
        "learning.false_positive_detected": 1,
        "learning.pattern_detected": 2,
        "enhancement.regeneration_needed": 1,
    }
    registry = SchemaRegistry()
    for _, e in events.values():
        registry.validate_payload(e.type, e.payload)
        registry.validate_envelope(e.to_dict())


def test_each_drift_gets_its_alert(chain: Chain) -> None:
    """Every drift has exactly one alert caused by it, with the seed's payload and the right correlation."""
    layout = SpoolLayout(chain.spool)
    events = events_by_id(layout)
    for i, (drift_id, (score, p)) in enumerate(zip(chain.drifts, [*EARLIER, SEED_DRIFT], strict=True)):
        drift = events[drift_id][1]
        alerts = caused_by(layout, "alert.create_external", drift_id)
        assert [a.id for a in alerts] == [chain.alerts[i]]
        alert = alerts[0]
        assert alert.payload == {
            "alert_type": "model_drift",
            "severity": calculate_severity({"drift_score": score, "statistical_significance": p}),
            "model_name": MODEL,
            "feature_name": FEATURE,
            "drift_score": score,
            "feedback_url": f"/poet/feedback/{drift_id}",
            "investigation_priority": "medium",
            "execution_id": chain.executions[i],
            "function_name": FN,
            "drift_event_id": drift_id,
        }
        expected_corr = CORRELATION if i == 4 else f"drift-{MODEL}-{int(drift.timestamp)}"
        assert alert.correlation_id == expected_corr
    seed_alert = events[chain.alerts[4]][1]
    assert seed_alert.payload["severity"] == "critical"
    assert [events[a][1].payload["severity"] for a in chain.alerts[:4]] == ["high", "high", "high", "high"]


def test_unhelpful_retraining_is_a_false_positive(chain: Chain) -> None:
    """The retraining that did not help yields learning.false_positive_detected caused by it."""
    layout = SpoolLayout(chain.spool)
    (fp,) = [e for _, e in iter_events(layout) if e.type == "learning.false_positive_detected"]
    assert fp.causation_id == chain.retrain
    assert fp.correlation_id == CORRELATION
    assert fp.payload == {
        "execution_id": chain.executions[-1],
        "model_name": MODEL,
        "wasted_cost": 420.0,
        "adjustment_needed": "increase_threshold",
        "function_name": FN,
    }


def test_fifth_false_alarm_detects_patterns_and_requests_regeneration(chain: Chain) -> None:
    """The fifth false alarm causes threshold_too_sensitive + false_positive_seasonal and regeneration_needed."""
    layout = SpoolLayout(chain.spool)
    fifth = chain.humans[-1]
    patterns = [e for _, e in iter_events(layout) if e.type == "learning.pattern_detected"]
    assert {p.causation_id for p in patterns} == {fifth}
    by_type = {p.payload["pattern_type"]: p for p in patterns}
    assert set(by_type) == {"threshold_too_sensitive", "false_positive_seasonal"}
    tts = by_type["threshold_too_sensitive"].payload
    assert tts["affected_functions"] == [FN]
    assert tts["evidence"] == {"sample_size": 5, "correlation_strength": 1.0, "business_impact": "high"}
    seasonal = by_type["false_positive_seasonal"].payload
    assert seasonal["evidence"]["sample_size"] == 5
    assert seasonal["evidence"]["correlation_strength"] >= 0.6
    for p in patterns:
        assert p.correlation_id == CORRELATION
    (need,) = [e for _, e in iter_events(layout) if e.type == "enhancement.regeneration_needed"]
    assert need.causation_id == fifth
    assert need.correlation_id == CORRELATION
    assert need.payload["function_name"] == FN
    assert need.payload["reason"] == "human_feedback_pattern"
    assert need.payload["feedback_evidence"]["feedback_event_id"] == fifth
    assert {p["pattern_type"] for p in need.payload["feedback_evidence"]["patterns"]} == set(by_type)
    for earlier in chain.humans[:-1]:
        assert caused_by(layout, "learning.pattern_detected", earlier) == []
        assert caused_by(layout, "enhancement.regeneration_needed", earlier) == []


def test_human_feedback_is_linked_to_its_alert(chain: Chain) -> None:
    """Each false alarm carries its alert's correlation id and the alert as its cause."""
    events = events_by_id(SpoolLayout(chain.spool))
    for fid, alert_id in zip(chain.humans, chain.alerts, strict=True):
        fb, alert = events[fid][1], events[alert_id][1]
        assert fb.causation_id == alert_id
        assert fb.correlation_id == alert.correlation_id


def test_correlation_reads_as_one_tree_from_the_drift(chain: Chain) -> None:
    """connected(layout, "drift-alert-123") is one tree rooted at the seed drift, every link a causation link."""
    layout = SpoolLayout(chain.spool)
    roots = connected(layout, CORRELATION)
    assert len(roots) == 1, render_tree(roots)
    root = roots[0]
    assert root.event.id == chain.drifts[-1]
    assert root.event.type == "drift.detected"
    nodes = flatten(root)
    types = sorted(n.event.type for n in nodes)
    assert types == sorted(
        [
            "drift.detected",
            "alert.create_external",
            "feedback.human_validation",
            "feedback.model_retrained",
            "learning.false_positive_detected",
            "learning.pattern_detected",
            "learning.pattern_detected",
            "enhancement.regeneration_needed",
        ]
    )
    for n in nodes:
        for c in n.children:
            assert c.event.causation_id == n.event.id
        assert n.event.correlation_id == CORRELATION
    (alert,) = root.children
    assert alert.event.id == chain.alerts[-1]
    assert {c.event.id for c in alert.children} == {chain.humans[-1], chain.retrain}
    text = render_tree(roots)
    assert "not found)" not in text
    assert text.splitlines()[0].startswith(f"drift.detected  {chain.drifts[-1]}")


def test_feedback_records_are_processed(chain: Chain) -> None:
    """feedback/processed holds the five human verdicts and the retraining report; feedback/pending is empty."""
    layout = SpoolLayout(chain.spool)
    assert json_names(layout.feedback_pending) == set()
    expected = {f"{i}.json" for i in [*chain.humans, chain.retrain]}
    assert json_names(layout.feedback_processed) == expected
    rec = json.loads((layout.feedback_processed / f"{chain.retrain}.json").read_text())
    assert rec["type"] == "feedback.model_retrained"
    assert rec["correlation_id"] == CORRELATION
    for fid in chain.humans:
        rec = json.loads((layout.feedback_processed / f"{fid}.json").read_text())
        assert rec["type"] == "feedback.human_validation" and rec["function_name"] == FN


def test_learning_state_after_chain(chain: Chain) -> None:
    """The learning engine holds five detections, six verdicts, and both patterns reported by the fifth feedback."""
    snap = LearningEngine(SpoolLayout(chain.spool)).snapshot()
    assert set(snap["detections"]) == set(chain.executions)
    assert set(snap["feedback"]) == {*chain.humans, chain.retrain}
    assert snap["reported"] == {
        FN: {
            "threshold_too_sensitive": {"version": "", "by": chain.humans[-1]},
            "false_positive_seasonal": {"version": "", "by": chain.humans[-1]},
        }
    }


# -- replay -----------------------------------------------------------------------------
def replay_causes(
    spool: Path, cwd: Path
) -> tuple[dict[str, Any], dict[str, set[str]], dict[str, Any], dict[str, set[str]], subprocess.CompletedProcess[str]]:
    """Snapshot, move processed drift.detected/feedback.* back to pending in emit order, run daemon --once."""
    layout = SpoolLayout(spool)
    engine = LearningEngine(layout)
    before_snap, before_files = engine.snapshot(), event_files(layout)
    before_fb = (json_names(layout.feedback_pending), json_names(layout.feedback_processed))
    causes = sorted(
        (
            e
            for s, e in iter_events(layout, ("processed",))
            if e.type == "drift.detected" or e.type.startswith("feedback.")
        ),
        key=lambda e: (e.timestamp, e.id),
    )
    assert len(causes) >= 11
    for e in causes:
        os.rename(layout.processed / f"{e.id}.json", layout.pending / f"{e.id}.json")
    proc = daemon_once(spool, cwd)
    after_fb = (json_names(layout.feedback_pending), json_names(layout.feedback_processed))
    assert after_fb == before_fb
    return before_snap, before_files, engine.snapshot(), event_files(layout), proc


def test_replay_is_idempotent(chain: Chain, tmp_path: Path) -> None:
    """Re-handling every cause event gives the same learning state and no new follow-up events."""
    spool = tmp_path / "replay"
    shutil.copytree(chain.spool, spool, symlinks=True)
    before_snap, before_files, after_snap, after_files, proc = replay_causes(spool, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert after_snap == before_snap
    assert after_files == before_files


def test_replay_after_new_version_is_idempotent(chain: Chain, tmp_path: Path) -> None:
    """Replaying the causes after the function moved to a new version adds no events and keeps the learning state."""
    spool = tmp_path / "replay"
    shutil.copytree(chain.spool, spool, symlinks=True)
    router = EventRouter(spool=spool, config=Config(spool=spool))
    need = caused_by(router.layout, "enhancement.regeneration_needed", chain.humans[-1])[0]
    router.emit(
        "enhancement.regenerated",
        {
            "function_name": FN,
            "old_version": "1.0.0",
            "new_version": "1.1.0",
            "regeneration_reason": "threshold_too_sensitive",
            "improvements": ["raise drift threshold to 0.7"],
            "expected_impact": {"false_positive_reduction": 0.6, "accuracy_improvement": 0.05, "cost_reduction": 0.3},
        },
        source="poet.generator",
        correlation_id=CORRELATION,
        causation_id=need.id,
    )
    proc = daemon_once(spool, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((spool / "state" / FN / "current.json").read_text())["version"] == "1.1.0"
    before_snap, before_files, after_snap, after_files, once = replay_causes(spool, tmp_path)
    assert once.returncode == 0, once.stderr
    new = set().union(*after_files.values()) - set().union(*before_files.values())
    everything = {e.id: e for _, e in iter_events(SpoolLayout(spool))}
    new_events = sorted(
        (e.type, everything[e.causation_id].type if e.causation_id in everything else None)
        for e in everything.values()
        if f"{e.id}.json" in new
    )
    assert new_events == [], f"replay emitted new follow-ups (type, cause type): {new_events}"
    assert after_snap == before_snap


# -- the demo -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`python -m poetctl.demo SPOOL` run once as a subprocess.

    If it hangs past the deadline it gets SIGINT, so its ``finally`` still stops the daemon it started.
    """
    base = tmp_path_factory.mktemp("demo")
    spool = base / "demo-spool"
    argv = [sys.executable, "-m", "poetctl.demo", str(spool)]
    popen = subprocess.Popen(
        argv,
        env=clean_env(),
        cwd=base,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = popen.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        popen.send_signal(signal.SIGINT)
        try:
            out, err = popen.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, err = popen.communicate()
        err += f"\n(test: demo still running after {CLI_TIMEOUT}s; interrupted)"
    return spool, subprocess.CompletedProcess(argv, popen.returncode, out, err)


def test_demo_runs_the_chain(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The demo exits 0, prints the drift-alert-123 chain and ends at current version 1.1.0."""
    spool, proc = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "current version 1.1.0" in out
    assert "daemon stopped (exit 0)" in out
    chain_part = out[out.index(f"the chain of {CORRELATION}") :]
    for t in (
        "drift.detected",
        "alert.create_external",
        "feedback.human_validation",
        "feedback.model_retrained",
        "learning.false_positive_detected",
        "learning.pattern_detected",
        "enhancement.regeneration_needed",
        "enhancement.regenerated",
    ):
        assert t in chain_part, f"{t} missing from the demo's chain:\n{chain_part}"
    assert chain_part.splitlines()[1].startswith("drift.detected")
    assert "not found)" not in chain_part
    assert current_version(spool) == "1.1.0"


def current_version(spool: Path) -> str | None:
    cur = spool / "state" / FN / "current.json"
    return json.loads(cur.read_text()).get("version") if cur.exists() else None


def test_daemon_once_handles_follow_ups(tmp_path: Path) -> None:
    """`daemon --once` also handles the follow-ups its handlers emit: a drift ends with its alert processed."""
    spool = tmp_path / "once"
    router = EventRouter(spool=spool, config=Config(spool=spool))
    drift = router.emit("drift.detected", drift_payload("exec-once", *SEED_DRIFT))
    proc = daemon_once(spool, tmp_path)
    assert proc.returncode == 0, proc.stderr
    layout = router.layout
    (alert,) = caused_by(layout, "alert.create_external", drift)
    assert json_names(layout.pending) == set(), "follow-up left pending after daemon --once exited 0"
    assert json_names(layout.processed) == {f"{drift}.json", f"{alert.id}.json"}
