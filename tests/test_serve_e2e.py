"""End to end through the real processes: drift -> alert (daemon) -> people answer on the page -> learning pattern."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
from conftest import clean_env, cli_argv
from serve_harness import DEFAULT_TABLE, FEEDBACK_SECRET, Server, spool_events

from poetctl import EventRouter
from poetctl.integrations.links import feedback_url

DRIFT = {
    "function_name": "detect_drift",
    "model_name": "customer_churn_model",
    "feature_name": "user_activity_score",
    "drift_score": 0.62,
    "method": "ks_test",
    "statistical_significance": 0.03,
    "data_characteristics": {"sample_size": 5000, "data_type": "continuous", "missing_values_percent": 0.0},
}
N = 5  # [learning] min_samples: five validated detections make a rate


def daemon_once(server: Server) -> None:
    p = subprocess.run(
        cli_argv("daemon", "--once", "--spool", server.spool),
        cwd=server.root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr


def test_false_alarms_answered_on_the_page_become_a_learning_pattern(tmp_path: Path) -> None:
    """Five drift alerts answered 'False alarm' on the page -> learning.pattern_detected + regeneration_needed."""
    server = Server(tmp_path, DEFAULT_TABLE)
    try:
        router = EventRouter(spool=server.spool)
        drift_ids = [
            router.emit("drift.detected", {**DRIFT, "execution_id": f"exec-{i}"}, correlation_id=f"drift-alert-{i}")
            for i in range(N)
        ]
        daemon_once(server)
        alerts = {a["causation_id"]: a for a in spool_events(server.spool, "alert.create_external")}
        assert set(alerts) == set(drift_ids)
        for i, drift_id in enumerate(drift_ids):
            # The alert's own feedback_url is the page's path; the integration signs it (as Slack/PagerDuty links do).
            assert alerts[drift_id]["payload"]["feedback_url"] == f"/poet/feedback/{drift_id}"
            url = feedback_url(server.url, drift_id, secret=FEEDBACK_SECRET.encode(), now=time.time())
            form = {"t": httpx.URL(url).params["t"], "answer": "false_alarm", "reason": f"noise {i}", "minutes": "5"}
            r = httpx.post(url.split("?")[0], data=form)
            assert r.status_code == 200, r.text
        feedback = spool_events(server.spool, "feedback.human_validation")
        assert sorted(f["correlation_id"] for f in feedback) == [f"drift-alert-{i}" for i in range(N)]
        daemon_once(server)
        [pattern] = [
            p
            for p in spool_events(server.spool, "learning.pattern_detected")
            if p["payload"]["pattern_type"] == "threshold_too_sensitive"
        ]
        assert pattern["payload"]["affected_functions"] == ["detect_drift"]
        assert pattern["payload"]["evidence"]["sample_size"] == N
        regen = spool_events(server.spool, "enhancement.regeneration_needed")
        assert [r["payload"]["reason"] for r in regen] == ["human_feedback_pattern"]
    finally:
        server.stop()
