"""``make demo``: the seed's ML-monitoring story on the embedded spool.

1. start ``poetctl daemon`` on a fresh spool (``.poet/demo`` unless given);
2. emit four earlier drift detections, each answered "false alarm", then the
   seed's example drift (``detect_drift`` on ``customer_churn_model``);
3. answer its alert with a "false alarm" human validation and report a
   retraining that did not help;
4. wait until every event is processed; the learning engine has meanwhile
   spotted the pattern and asked for regeneration, and the "generator" (this
   script) answers with ``enhancement.regenerated``;
5. print the chain and the function's state;
6. stop the daemon (SIGTERM) and exit 0.

``python -m poetctl.demo [SPOOL] [--keep]``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .backends.fs.layout import SpoolLayout, remove_spool
from .chain import connected, render_tree
from .router import EventRouter
from .transport import Query, State, Transport

FUNCTION = "detect_drift"
MODEL = "customer_churn_model"
FEATURE = "user_activity_score"
CORRELATION = "drift-alert-123"


def _drift(execution_id: str, score: float, p_value: float) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "function_name": FUNCTION,
        "model_name": MODEL,
        "feature_name": FEATURE,
        "drift_score": score,
        "method": "ks_test",
        "statistical_significance": p_value,
        "data_characteristics": {"sample_size": 10000, "data_type": "continuous", "missing_values_percent": 0.0},
    }


def _false_alarm(router: EventRouter, execution_id: str, alert: Any) -> str:
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
            "function_name": FUNCTION,
        },
        source="external.pagerduty",
        correlation_id=alert.correlation_id,
        causation_id=alert.id,
    )


# Errors a look-up may meet and retry (``make demo-cluster`` sets the NATS ones: a fresh R3 cluster can
# answer "service unavailable" while it elects a leader); none on the spool.
TRANSIENT: list[type[BaseException]] = []


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = predicate()
        except tuple(TRANSIENT) as exc:
            print(f"  (retrying: {type(exc).__name__})", flush=True)
            got = None
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"demo: timed out waiting for {what}")


def _find(transport: Transport, type_: str, **match: Any) -> list[Any]:
    return [
        e
        for e in (s.event for s in transport.select(Query(types=[type_])))
        if e is not None and all(getattr(e, k, None) == v or e.payload.get(k) == v for k, v in match.items())
    ]


def _idle(transport: Transport) -> bool:
    counts = transport.counts()
    return counts[State.PENDING] == 0 and counts[State.INFLIGHT] == 0


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def story(router: EventRouter, transport: Transport, states: Any) -> None:
    """Drift -> alert -> feedback -> learning -> regeneration, on any backend; returns when all is handled.

    ``make demo`` runs it on the spool, ``make demo-cluster`` (:mod:`poetctl.demo_cluster`) on NATS.
    """
    say("four earlier drift alerts on customer_churn_model, each answered 'false alarm'")
    for i, (score, p) in enumerate([(0.62, 0.03), (0.58, 0.04), (0.66, 0.02), (0.71, 0.01)]):
        ex = f"exec-{i + 1:03d}-{uuid.uuid4().hex[:8]}"
        drift = router.emit(
            "drift.detected", _drift(ex, score, p), source="poet.generator", correlation_id=f"drift-alert-{119 + i}"
        )
        alert = _wait(lambda d=drift: _find(transport, "alert.create_external", causation_id=d), "an alert")[0]
        fid = _false_alarm(router, ex, alert)
        print(f"  drift {drift} score={score} -> alert {alert.id} ({alert.payload['severity']}) -> false alarm {fid}")

    say(f"the seed's drift: detect_drift flags {FEATURE} (score 0.87, p=0.003), correlation {CORRELATION}")
    ex = f"exec-005-{uuid.uuid4().hex[:8]}"
    drift = router.emit("drift.detected", _drift(ex, 0.87, 0.003), source="poet.generator", correlation_id=CORRELATION)
    alert = _wait(lambda: _find(transport, "alert.create_external", causation_id=drift), "the alert")[0]
    print(
        f"  alert.create_external {alert.id}: severity {alert.payload['severity']}, "
        f"priority {alert.payload['investigation_priority']}, feedback {alert.payload['feedback_url']}"
    )

    say("the on-call engineer says: false alarm")
    fid = _false_alarm(router, ex, alert)
    print(f"  feedback.human_validation {fid}")
    needs = _wait(lambda: _find(transport, "enhancement.regeneration_needed", causation_id=fid), "regeneration")
    need = needs[0]
    for pat in _find(transport, "learning.pattern_detected", causation_id=fid):
        print(f"  learning.pattern_detected {pat.payload['pattern_type']}: {pat.payload['recommended_action']}")
    say("MLflow reports that the retraining the alert triggered did not help")
    rid = router.emit(
        "feedback.model_retrained",
        {
            "execution_id": ex,
            "model_name": MODEL,
            "performance_before": 0.912,
            "performance_after": 0.909,
            "retraining_cost_usd": 420.0,
            "improvement_confirmed": False,
        },
        source="external.mlflow",
        correlation_id=CORRELATION,
        causation_id=alert.id,
    )
    print(f"  feedback.model_retrained {rid}")
    fp = _wait(lambda: _find(transport, "learning.false_positive_detected", causation_id=rid), "the verdict")[0]
    print(
        f"  learning.false_positive_detected: wasted ${fp.payload['wasted_cost']:.0f}, "
        f"{fp.payload['adjustment_needed']}"
    )
    say(f"regeneration needed ({need.payload['reason']}): the generator ships version 1.1.0")
    router.emit(
        "enhancement.regenerated",
        {
            "function_name": FUNCTION,
            "old_version": "1.0.0",
            "new_version": "1.1.0",
            "regeneration_reason": need.payload.get("pattern_type") or need.payload["reason"],
            "improvements": ["raise drift threshold to 0.7", "seasonal reference window"],
            "expected_impact": {
                "false_positive_reduction": 0.6,
                "accuracy_improvement": 0.05,
                "cost_reduction": 0.3,
            },
        },
        source="poet.generator",
        correlation_id=need.correlation_id,
        causation_id=need.id,
    )
    _wait(lambda: states.current(FUNCTION), "the function state")
    _wait(lambda: _idle(transport), "the spool to drain")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    keep = "--keep" in args
    args = [a for a in args if a != "--keep"]
    spool = Path(args[0] if args else ".poet/demo")
    if spool.exists() and not keep:
        remove_spool(spool)
    layout = SpoolLayout(spool)
    layout.init()
    router = EventRouter(spool=spool)
    transport, states = router.transport, router.stores.state
    say(f"spool {spool} — starting the daemon")
    env = {**os.environ, "POET_SPOOL": str(spool)}
    env.pop("POET_CONFIG", None)
    daemon = subprocess.Popen([sys.executable, "-m", "poetctl", "daemon", "--rescan-interval", "0.5"], env=env)
    try:
        story(router, transport, states)

        say(f"the chain of {CORRELATION} (drift -> alert -> feedback -> pattern -> regeneration)")
        print(render_tree(connected(layout, CORRELATION)))
        say(f"state of {FUNCTION}")
        cur = states.current(FUNCTION) or {}
        print(f"  current version {cur.get('version')} (was {cur.get('previous_version')}): {cur.get('reason')}")
        for h in states.history(FUNCTION):
            print(f"  history {h['version']}  {', '.join(h.get('improvements', []))}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
    say(f"daemon stopped (exit {code}). Explore: poetctl --spool {spool} status | tail | correlate {CORRELATION}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
