"""``poetctl serve`` in nats mode: the feedback page and the PagerDuty webhook find alerts on the stream;
one answer per alert holds on NATS (a second commit of an id is a no-op there too)."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from serve_harness import PD_SECRETS, Server, spool_events
from test_serve_nats import HEALTH, Stage, drift_and_alert, form, link, pytestmark, served, stage

__all__ = ["pytestmark", "served", "stage"]  # the skip mark and the fixtures, imported for pytest


def test_the_feedback_page_finds_the_alert_on_nats_and_records_one_answer(served: tuple[Stage, Server]) -> None:
    """GET shows the alert read from NATS; POST publishes human_validation with its correlation; a 2nd is 409."""
    stage, s = served
    drift_id, alert = drift_and_alert(stage, s)
    url = link(s, drift_id, answer="false_alarm")
    page = httpx.get(url, timeout=60)
    assert page.status_code == 200, page.text
    assert "customer_churn_model" in page.text and 'id="answer-false_alarm" checked' in page.text
    r = httpx.post(url.split("?")[0], data=form(url), timeout=60)
    assert r.status_code == 200 and 'id="thanks"' in r.text, r.text
    [ev] = stage.events("feedback.human_validation")
    assert ev.correlation_id == alert.correlation_id == "corr-nats-fb" and ev.causation_id == alert.id
    assert ev.payload["was_real_drift"] is False and ev.payload["execution_id"] == "exec-nats-7c1"
    again = httpx.post(url.split("?")[0], data=form(url, answer="real_drift"), timeout=60)
    assert again.status_code == 409 and 'id="already"' in again.text and "False alarm" in again.text
    assert httpx.get(link(s, alert.id), timeout=60).status_code == 409  # the alert's own link: answered too
    assert len(stage.events("feedback.human_validation")) == 1
    assert spool_events(s.spool) == []


def test_racing_submits_on_nats_record_exactly_one_answer(served: tuple[Stage, Server]) -> None:
    """Six simultaneous submits: one 200, five 409, one feedback.human_validation on the stream."""
    stage, s = served
    drift_id, _ = drift_and_alert(stage, s)
    url = link(s, drift_id)
    codes: list[int] = []
    go = threading.Barrier(6)

    def submit(i: int) -> None:
        go.wait()
        codes.append(httpx.post(url.split("?")[0], data=form(url, reason=f"answer {i}"), timeout=60).status_code)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * 5
    assert len(stage.events("feedback.human_validation")) == 1


def test_nats_commit_of_an_existing_id_answers_false_as_the_spool_does(stage: Stage) -> None:
    """The contract the page relies on: on NatsTransport a second (or racing) commit of a keyed id is False."""
    router = stage.router()
    built = router.build("system.health", HEALTH["payload"], id="answer-once-1")
    assert built[1] is True  # an id chosen by the caller is keyed: checked for existence
    assert router.commit_events([built]) == [True]
    assert router.commit_events([built]) == [False]
    racing = [router.build("system.health", HEALTH["payload"], id="answer-race-1") for _ in range(8)]
    results: list[bool] = []
    go = threading.Barrier(len(racing))

    def commit(ev: Any) -> None:
        go.wait()
        results.extend(router.commit_events([ev]))

    threads = [threading.Thread(target=commit, args=(ev,)) for ev in racing]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_a_pagerduty_resolve_finds_the_alert_on_nats(served: tuple[Stage, Server]) -> None:
    """incident.resolved with the alert's correlation as incident_key publishes feedback.alert_resolved to NATS."""
    from integrations_stage import pd_webhook

    stage, s = served
    _, alert = drift_and_alert(stage, s)
    body, headers = pd_webhook(PD_SECRETS["POET_TEST_PD_NEW"], alert.correlation_id, "PDEVT-nats-1")
    r = httpx.post(s.url + "/webhooks/pagerduty", content=body, headers=headers, timeout=60)
    assert r.status_code == 200 and r.json()["added"] == 1, r.text
    [ev] = stage.events("feedback.alert_resolved")
    assert ev.correlation_id == alert.correlation_id and ev.causation_id == alert.id
    assert ev.payload["execution_id"] == "exec-nats-7c1"
