"""``POST /webhooks/pagerduty``: v3 signature vectors (0 false accepts), incident.resolved -> alert_resolved.

The signer here is written from PagerDuty's "Verifying Signatures" page, not
from poetctl's code: ``X-PagerDuty-Signature: v1=<hex HMAC-SHA256(secret,
raw body)>[,v1=...]``, one signature per active secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_harness import DEFAULT_TABLE, PD_SECRETS, Server, spool_events

from poetctl import EventRouter
from poetctl.serve import pagerduty
from poetctl.serve.settings import Secrets

NEW, OLD = PD_SECRETS["POET_TEST_PD_NEW"], PD_SECRETS["POET_TEST_PD_OLD"]
CORRELATION = "drift-customer_churn_model-1767225600"
ALERT = {
    "alert_type": "model_drift",
    "severity": "critical",
    "model_name": "customer_churn_model",
    "feature_name": "user_activity_score",
    "drift_score": 0.82,
    "feedback_url": "/poet/feedback/x",
    "investigation_priority": "medium",
    "execution_id": "exec-42",
}


def sign(secret: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook(
    event_type: str = "incident.resolved", key: str = CORRELATION, pd_id: str = "01DEN4HDBDS8S5", **data: Any
) -> bytes:
    doc = {
        "event": {
            "id": pd_id,
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": "2026-01-01T00:45:30.000Z",
            "agent": {"id": "PLH1HKV", "type": "user_reference"},
            "client": {"name": "PagerDuty"},
            "data": {
                "id": "PGR0VU2",
                "type": "incident",
                "number": 2,
                "status": "resolved",
                "incident_key": key,
                "created_at": "2026-01-01T00:00:00Z",
                "title": "Model drift: customer_churn_model / user_activity_score (0.82)",
                "urgency": "high",
                "resolve_reason": None,
                **data,
            },
        }
    }
    return json.dumps(doc, ensure_ascii=False).encode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path, DEFAULT_TABLE)
    EventRouter(spool=s.spool).emit("alert.create_external", ALERT, correlation_id=CORRELATION)
    yield s
    s.stop()


def deliver(server: Server, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-PagerDuty-Signature"] = signature
    return httpx.post(server.url + "/webhooks/pagerduty", content=body, headers=headers)


def resolved(server: Server) -> list[dict[str, Any]]:
    return spool_events(server.spool, "feedback.alert_resolved")


BODY = webhook()
# (name, body sent, header, accepted?)
VECTORS = [
    ("valid", BODY, sign(NEW, BODY), True),
    ("valid-old-secret-still-active", BODY, sign(OLD, BODY), True),
    ("rotated-two-signatures", BODY, f"{sign('retired-secret', BODY)},{sign(NEW, BODY)}", True),
    ("rotated-with-spaces", BODY, f"{sign('retired-secret', BODY)}, {sign(OLD, BODY)}", True),
    ("wrong-secret", BODY, sign("not-our-secret", BODY), False),
    ("tampered-body", BODY.replace(b"resolved", b"resolveD", 1), sign(NEW, BODY), False),
    ("body-with-trailing-newline", BODY + b"\n", sign(NEW, BODY), False),
    ("unknown-version", BODY, sign(NEW, BODY).replace("v1=", "v2=", 1), False),
    ("no-version", BODY, sign(NEW, BODY)[3:], False),
    ("uppercase-hex", BODY, "v1=" + sign(NEW, BODY)[3:].upper(), False),
    ("truncated", BODY, sign(NEW, BODY)[:-2], False),
    ("empty-signature", BODY, "v1=", False),
    ("only-commas", BODY, ",,,", False),
    ("sha1-instead", BODY, "v1=" + hmac.new(NEW.encode(), BODY, hashlib.sha1).hexdigest(), False),
    ("signed-other-body", BODY, sign(NEW, webhook(pd_id="other")), False),
]


@pytest.mark.parametrize(("name", "body", "header", "ok"), VECTORS, ids=[v[0] for v in VECTORS])
def test_signature_vectors_have_no_false_accepts(name: str, body: bytes, header: str, ok: bool) -> None:
    """Each vector: the verifier accepts exactly the genuinely signed ones (old and new secret during rotation)."""
    secrets = Secrets([NEW.encode(), OLD.encode()])
    assert pagerduty.verify(header, body, secrets) is ok


def test_the_server_accepts_only_genuine_deliveries(server: Server) -> None:
    """Against the running server: every bad vector is refused (403/401) and emits nothing; 0 false accepts."""
    for name, body, header, ok in VECTORS:
        if ok:
            continue
        r = deliver(server, body, header)
        assert r.status_code == 403 and r.json()["error"] == "bad_signature", name
    r = deliver(server, BODY, None)
    assert r.status_code == 401
    assert resolved(server) == []
    good = deliver(server, BODY, sign(OLD, BODY))
    assert good.status_code == 200, good.text
    assert len(resolved(server)) == 1


def test_incident_resolved_becomes_feedback_alert_resolved(server: Server) -> None:
    """incident.resolved -> feedback.alert_resolved with the seed's fields, the alert's correlation and cause."""
    [alert] = spool_events(server.spool, "alert.create_external")
    r = deliver(server, BODY, sign(NEW, BODY))
    assert r.status_code == 200 and r.json()["added"] == 1
    [ev] = resolved(server)
    assert ev["source"] == "external.pagerduty"
    assert ev["correlation_id"] == CORRELATION and ev["causation_id"] == alert["id"]
    assert ev["payload"] == {
        "execution_id": "exec-42",
        "resolution_type": "resolved",
        "resolution_time_minutes": 45.5,
        "was_useful": True,
    }


def test_a_replayed_delivery_is_a_no_op(server: Server) -> None:
    """v3 signatures carry no timestamp: a replay (or PagerDuty's retry) of one delivery emits once."""
    first = deliver(server, BODY, sign(NEW, BODY)).json()
    again = deliver(server, BODY, sign(NEW, BODY)).json()
    assert first["added"] == 1 and again["added"] == 0 and again["existing"] == first["ids"]
    assert len(resolved(server)) == 1


def test_a_merged_incident_says_so(server: Server) -> None:
    """resolve_reason merge_resolve_reason -> resolution_type merged."""
    body = webhook(resolve_reason={"type": "merge_resolve_reason", "incident": {"id": "P1"}})
    assert deliver(server, body, sign(NEW, body)).status_code == 200
    assert resolved(server)[0]["payload"]["resolution_type"] == "merged"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (webhook("incident.triggered"), "not handled"),
        (webhook(key="someone-elses-incident"), "no POET alert"),
        (webhook(incident_key=None), "no incident_key"),
    ],
    ids=["other-type", "unknown-key", "no-key"],
)
def test_deliveries_that_are_not_ours_are_acknowledged_and_ignored(server: Server, body: bytes, why: str) -> None:
    """Other event types and unknown incidents: 200 with the reason (PagerDuty must not retry), nothing emitted."""
    r = deliver(server, body, sign(NEW, body))
    assert r.status_code == 200 and why in r.json()["ignored"]
    assert resolved(server) == []


def test_a_signed_body_that_is_not_a_webhook_is_400(server: Server) -> None:
    """Authentic but malformed: 400 JSON naming what is wrong, nothing emitted."""
    for body in (b"[1, 2]", b"{not json", json.dumps({"event": {"id": "x"}}).encode()):
        r = deliver(server, body, sign(NEW, body))
        assert r.status_code == 400 and r.json()["error"] == "bad_webhook"
    assert resolved(server) == []


def test_webhooks_are_refused_without_a_configured_secret(tmp_path: Path) -> None:
    """No [serve] pagerduty_secret: 403 disabled, even for a body signed with some secret."""
    s = Server(tmp_path, 'token = "env:POET_TEST_TOKEN_A"\n')
    try:
        r = deliver(s, BODY, sign(NEW, BODY))
        assert r.status_code == 403 and r.json()["error"] == "disabled"
    finally:
        s.stop()
