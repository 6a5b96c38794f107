"""The issue's story end to end, through real ``poetctl daemon`` and ``poetctl serve`` processes.

drift (POST /events) -> the daemon raises alerts -> PagerDuty trigger + Slack
message (stand-ins validating as the real APIs) -> people answer on the page
(one in a real browser, the rest over HTTP, from the links PagerDuty and
Slack received) -> learning pattern -> regeneration requested -> PagerDuty's
signed v3 ``incident.resolved`` webhook to serve -> ``feedback.alert_resolved``;
a resolution recorded in POET resolves the PagerDuty alert; ``poetctl
correlate`` shows the whole chain.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import cli_argv
from integrations_stage import DRIFT, Story, buttons, link_id, pd_webhook, token
from serve_harness import FEEDBACK_SECRET, PD_SECRETS

from poetctl.integrations.links import feedback_url

N = 5  # [learning] min_samples: five validated detections make a rate
CORR = [f"drift-alert-{i}" for i in range(N)]
CHAIN = "drift.detected>alert.create_external>feedback.human_validation>learning.pattern_detected"


def answer(url: str, choice: str, reason: str) -> httpx.Response:
    """Open a feedback link and submit the form over HTTP, as the page's form does."""
    page = httpx.get(url)
    assert page.status_code == 200, page.text
    if "answer=" in url:  # Slack's buttons preselect their answer
        assert f'id="answer-{choice}" checked' in page.text
    form = {"t": token(url), "answer": choice, "reason": reason, "minutes": "4", "confidence": "high"}
    return httpx.post(url.split("?")[0], data=form)


def by_corr(reqs: list[Any], key: str) -> list[dict[str, Any]]:
    return [r.json() for r in reqs if r.json().get("dedup_key") == key]


def browser_answer(url: str, profile: Path) -> None:
    """One person answers "False alarm" in headless Chromium (skipped without Debian's chromium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from test_serve_browser import CHROMEDRIVER, CHROMIUM, FLAGS

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(url)
        assert driver.find_element(By.ID, "answer-false_alarm").is_selected()
        driver.find_element(By.ID, "reason").send_keys("Promo traffic, not drift.")
        driver.find_element(By.ID, "minutes").send_keys("12")
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "thanks")))
    finally:
        driver.quit()


def test_drift_to_page_to_learning_to_resolution_through_real_processes(tmp_path: Path) -> None:
    """drift -> PD + Slack -> answers on the page -> pattern -> regeneration -> PD webhook -> correlate shows it all."""
    from test_serve_browser import CHROMEDRIVER, CHROMIUM

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    with ExitStack() as stack:
        story = Story(tmp_path, stack)
        story.start_daemon()
        drift_ids = [
            story.emit("drift.detected", {**DRIFT, "execution_id": f"exec-{i}"}, correlation_id=CORR[i])
            for i in range(N)
        ]

        # PagerDuty gets one trigger per alert (dedup key = correlation id), Slack one message; both accepted.
        triggers = story.pd.wait_for(N)
        messages = story.slack.wait_for(N)
        assert all(r.reply == 202 for r in triggers) and all(r.reply == 200 for r in messages)
        assert sorted(r.json()["dedup_key"] for r in triggers) == CORR
        story.wait_until("alert.created_external x5", lambda: len(story.events("alert.created_external")) == N)
        alerts = {a["correlation_id"]: a for a in story.events("alert.create_external")}
        slack_links = {link_id(u): buttons(m.json()) for m in messages for u in buttons(m.json()).values()}
        pd_links = {r.json()["dedup_key"]: r.json()["payload"]["custom_details"]["feedback_url"] for r in triggers}

        # The links name the drift event (the seed's feedback_url); each is signed with [serve] feedback_secret.
        assert set(slack_links) == set(drift_ids)
        for i in range(N):
            assert link_id(pd_links[CORR[i]]) == drift_ids[i]

        # Alert 0: a person in the browser, from Slack's "False alarm" button.
        browser_answer(slack_links[drift_ids[0]]["False alarm"], tmp_path / "chromium-profile")
        # Alerts 1-2: over HTTP from Slack's buttons; alert 3 from PagerDuty's link.
        for i in (1, 2):
            r = answer(slack_links[drift_ids[i]]["False alarm"], "false_alarm", f"noise {i}")
            assert r.status_code == 200 and 'id="thanks"' in r.text, r.text
        r = answer(pd_links[CORR[3]], "false_alarm", "noise 3")
        assert r.status_code == 200, r.text
        # Alert 4: a link naming the alert's own id (what a custom integration might send) works too...
        own = feedback_url(story.server.url, alerts[CORR[4]]["id"], secret=FEEDBACK_SECRET.encode(), now=time.time())
        r = answer(own, "false_alarm", "noise 4")
        assert r.status_code == 200, r.text
        # ...and it is the same alert: the drift-id link from Slack is now refused as already answered.
        second = slack_links[drift_ids[4]]["Real drift"]
        r = httpx.get(second)
        assert r.status_code == 409 and 'id="already"' in r.text
        form = {"t": token(second), "answer": "real_drift", "reason": "second opinion", "minutes": "1"}
        r = httpx.post(second.split("?")[0], data=form)
        assert r.status_code == 409 and 'id="already"' in r.text

        feedback = story.events("feedback.human_validation")
        assert sorted(f["correlation_id"] for f in feedback) == CORR
        assert all(f["payload"]["was_real_drift"] is False for f in feedback)

        # The daemon learns: five false alarms of detect_drift -> a pattern and a regeneration request.
        [regen] = story.wait_until("regeneration_needed", lambda: story.processed("enhancement.regeneration_needed"))
        assert regen["payload"]["reason"] == "human_feedback_pattern"
        [pattern] = [
            p
            for p in story.processed("learning.pattern_detected")
            if p["payload"]["pattern_type"] == "threshold_too_sensitive"
        ]
        assert pattern["payload"]["affected_functions"] == ["detect_drift"]
        # The feedback that completed the pattern names the alert whose chain we follow.
        [last] = [f for f in feedback if f["id"] == pattern["causation_id"]]
        corr = last["correlation_id"]

        # PagerDuty's responder resolves that incident: a signed v3 webhook to serve.
        body, headers = pd_webhook(PD_SECRETS["POET_TEST_PD_OLD"], corr, "01RESOLVEDPD0001")
        r = httpx.post(story.server.url + "/webhooks/pagerduty", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
        [resolved_id] = r.json()["ids"]
        [resolved] = story.wait_until(
            "alert_resolved processed",
            lambda: [e for e in story.processed("feedback.alert_resolved") if e["id"] == resolved_id],
        )
        assert resolved["correlation_id"] == corr and resolved["source"] == "external.pagerduty"
        assert resolved["payload"]["resolution_time_minutes"] == 45.5
        # PagerDuty told us: nothing is echoed back to it (its incident is already resolved).
        assert [q["event_action"] for q in by_corr(story.pd.answered(), corr)] == ["trigger"]

        # Another alert closed in POET (an on-call tool posting to /events): PagerDuty gets the resolve.
        other = CORR[1] if corr != CORR[1] else CORR[2]
        closed = {
            "execution_id": "exec-x",
            "resolution_type": "resolved",
            "resolution_time_minutes": 9,
            "was_useful": True,
        }
        story.emit("feedback.alert_resolved", closed, correlation_id=other, source="ops.oncall")
        story.pd.wait_for(N + 1)
        [resolve] = [q for q in by_corr(story.pd.answered(), other) if q["event_action"] == "resolve"]
        assert resolve == {"routing_key": resolve["routing_key"], "event_action": "resolve", "dedup_key": other}

        # `poetctl correlate` shows the whole chain of that alert.
        p = subprocess.run(
            cli_argv("correlate", corr, "-o", "json", "--config", story.config, "--expect", CHAIN),
            cwd=story.root,
            env=story.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        types = {n["type"] for n in json.loads(p.stdout)}
        assert types >= {
            "drift.detected",
            "alert.create_external",
            "alert.created_external",
            "feedback.human_validation",
            "learning.pattern_detected",
            "enhancement.regeneration_needed",
            "feedback.alert_resolved",
        }, types
