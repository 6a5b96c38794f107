"""The feedback page /poet/feedback/<id> over HTTP: signed links, the form, one answer per alert, escaping."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import clean_env, cli_argv
from serve_harness import DEFAULT_TABLE, FEEDBACK_SECRET, Server, spool_events

from poetctl import EventRouter
from poetctl.integrations.links import DEFAULT_TTL, feedback_url, sign

DRIFT = {
    "execution_id": "exec-3f1c2b9e",
    "function_name": "detect_drift",
    "model_name": "customer_churn_model",
    "feature_name": "user_activity_score",
    "drift_score": 0.82,
    "method": "ks_test",
    "statistical_significance": 0.004,
    "data_characteristics": {"sample_size": 10000, "data_type": "continuous", "missing_values_percent": 0.0},
}
SECRET = FEEDBACK_SECRET.encode()


def drift_and_alert(server: Server, payload: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Emit a drift event and let the real daemon (built-in handlers) raise its alert; (drift id, alert)."""
    drift_id = EventRouter(spool=server.spool).emit("drift.detected", payload or DRIFT)
    p = subprocess.run(
        cli_argv("daemon", "--once", "--spool", server.spool),
        cwd=server.root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    [alert] = [a for a in spool_events(server.spool, "alert.create_external") if a["causation_id"] == drift_id]
    return drift_id, alert


def link(server: Server, event_id: str, **kw: Any) -> str:
    return feedback_url(server.url, event_id, secret=SECRET, now=time.time(), **kw)


def answers(server: Server) -> list[dict[str, Any]]:
    return spool_events(server.spool, "feedback.human_validation")


def form(token: str, **fields: str) -> dict[str, str]:
    return {"t": token, "answer": "false_alarm", "reason": "seasonal promo traffic", "minutes": "12", **fields}


def token_of(url: str) -> str:
    return httpx.URL(url).params["t"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path, DEFAULT_TABLE)
    yield s
    s.stop()


def test_the_page_shows_the_alert_and_preselects_the_answer(server: Server) -> None:
    """A signed link (the seed's drift-event id) shows model, feature, score, severity, when; ?answer preselects."""
    drift_id, _alert = drift_and_alert(server)
    r = httpx.get(link(server, drift_id, answer="false_alarm"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for text in ("customer_churn_model", "user_activity_score", "0.820", "critical", "<time datetime="):
        assert text in page
    assert 'value="false_alarm" id="answer-false_alarm" checked' in page
    assert 'value="real_drift" id="answer-real_drift" required' in page  # not checked
    assert "<legend>Was this real drift?</legend>" in page and '<label for="reason"' in page
    assert "<script" not in page and r.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_submitting_emits_human_validation_with_the_alerts_correlation(server: Server) -> None:
    """POST -> thank-you page and one feedback.human_validation: schema fields, alert's correlation id and cause."""
    drift_id, alert = drift_and_alert(server)
    url = link(server, drift_id)
    r = httpx.post(url.split("?")[0], data=form(token_of(url), confidence="medium"))
    assert r.status_code == 200 and 'id="thanks"' in r.text and "False alarm" in r.text
    [ev] = answers(server)
    assert ev["correlation_id"] == alert["correlation_id"] and ev["causation_id"] == alert["id"]
    assert ev["payload"] == {
        "execution_id": "exec-3f1c2b9e",
        "validation_type": "drift_accuracy",
        "was_real_drift": False,
        "confidence": 0.7,
        "reason": "seasonal promo traffic",
        "investigation_time_minutes": 12.0,
        "function_name": "detect_drift",
    }


def test_a_second_answer_is_refused_with_a_clear_page(server: Server) -> None:
    """After one answer, another POST (and a later visit) gets 409 'already answered'; still one event."""
    drift_id, _ = drift_and_alert(server)
    url = link(server, drift_id)
    base, token = url.split("?")[0], token_of(url)
    assert httpx.post(base, data=form(token)).status_code == 200
    again = httpx.post(base, data=form(token, answer="real_drift", reason="changed my mind"))
    assert again.status_code == 409 and 'id="already"' in again.text and "False alarm" in again.text
    visit = httpx.get(url)
    assert visit.status_code == 409 and 'id="already"' in visit.text
    [ev] = answers(server)
    assert ev["payload"]["was_real_drift"] is False


def test_racing_submits_yield_exactly_one_event(server: Server) -> None:
    """Several simultaneous submits: exactly one is recorded, the others see 'already answered'."""
    drift_id, _ = drift_and_alert(server)
    url = link(server, drift_id)
    base, token = url.split("?")[0], token_of(url)
    codes: list[int] = []
    go = threading.Barrier(6)

    def submit(i: int) -> None:
        go.wait()
        codes.append(httpx.post(base, data=form(token, reason=f"answer {i}"), timeout=60).status_code)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * 5
    assert len(answers(server)) == 1


def test_a_link_to_the_alert_itself_works_too(server: Server) -> None:
    """A link signed for the alert's id (not the drift's) shows and records the same alert, once."""
    drift_id, alert = drift_and_alert(server)
    url = link(server, alert["id"])
    assert httpx.get(url).status_code == 200
    assert httpx.post(url.split("?")[0], data=form(token_of(url))).status_code == 200
    # The drift link now finds the same alert answered: one answer per alert whichever link was used.
    assert httpx.get(link(server, drift_id)).status_code == 409
    assert len(answers(server)) == 1


def tamper(token: str) -> str:
    """``token`` with its last character changed (to a different one: "A" may already be there)."""
    return token[:-1] + ("B" if token.endswith("A") else "A")


@pytest.mark.parametrize("case", ["none", "garbage", "other-event", "wrong-secret", "expired", "tampered"])
def test_links_without_a_valid_token_are_refused(server: Server, case: str) -> None:
    """Missing, malformed, for another alert, forged, expired or altered tokens: 403 page on GET and POST."""
    drift_id, _ = drift_and_alert(server)
    now = time.time()
    token = {
        "none": "",
        "garbage": "not-a-token",
        "other-event": sign("some-other-event", secret=SECRET, now=now),
        "wrong-secret": sign(drift_id, secret=b"attacker", now=now),
        "expired": sign(drift_id, secret=SECRET, now=now - 2 * DEFAULT_TTL),
        "tampered": tamper(sign(drift_id, secret=SECRET, now=now)),
    }[case]
    base = f"{server.url}/poet/feedback/{drift_id}"
    g = httpx.get(base, params={"t": token} if token else None)
    assert g.status_code == 403 and "not valid" in g.text
    if case == "expired":
        assert "expired" in g.text
    p = httpx.post(base, data=form(token))
    assert p.status_code == 403
    assert answers(server) == []


def test_a_cross_site_post_without_the_token_records_nothing(server: Server) -> None:
    """CSRF: a form posted from elsewhere lacks the link's token -> 403, nothing emitted."""
    drift_id, _ = drift_and_alert(server)
    r = httpx.post(
        f"{server.url}/poet/feedback/{drift_id}",
        data={"answer": "real_drift", "reason": "x", "minutes": "1"},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and answers(server) == []


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"answer": ""}, "real drift or a false alarm"),
        ({"answer": "maybe"}, "real drift or a false alarm"),
        ({"reason": "   "}, "Say briefly why"),
        ({"minutes": "-3"}, "number of minutes"),
        ({"minutes": "nan"}, "number of minutes"),
        ({"minutes": "ten"}, "number of minutes"),
        ({"confidence": "absolute"}, "how sure"),
    ],
)
def test_an_incomplete_form_is_shown_again_with_the_problem(server: Server, fields: dict[str, str], error: str) -> None:
    """Bad fields: 422, the form again with an error summary (role=alert) and the entered reason kept."""
    drift_id, _ = drift_and_alert(server)
    url = link(server, drift_id)
    r = httpx.post(url.split("?")[0], data=form(token_of(url), **fields))
    assert r.status_code == 422 and 'role="alert"' in r.text and error in r.text
    assert 'aria-invalid="true"' in r.text
    assert answers(server) == []


def test_everything_shown_is_escaped(server: Server) -> None:
    """Markup and control characters from the event or the form are shown as text, never as HTML."""
    evil = {**DRIFT, "model_name": '<script>alert(1)</script>"x', "feature_name": "f\x1b[2Jeat<b>"}
    drift_id, _ = drift_and_alert(server, evil)
    url = link(server, drift_id)
    page = httpx.get(url).text
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&quot;x" in page
    assert "\x1b" not in page and "f\\x1b[2Jeat&lt;b&gt;" in page
    r = httpx.post(url.split("?")[0], data=form(token_of(url), reason='</textarea><img src=x onerror="y">', minutes=""))
    assert r.status_code == 422 and "<img" not in r.text and "&lt;/textarea&gt;&lt;img" in r.text


def test_unknown_events_and_non_alerts_are_404(server: Server) -> None:
    """A valid token for an id that is not in the spool, or not an alert: 404 page, nothing emitted."""
    other = EventRouter(spool=server.spool).emit("system.health", {"service": "s", "status": "healthy"})
    for eid in ("01a00000-0000-7000-8000-000000000000", other):
        r = httpx.get(link(server, eid))
        assert r.status_code == 404 and "not found" in r.text.lower()
    assert answers(server) == []


def test_an_oversized_or_wrong_form_is_refused(server: Server) -> None:
    """A form body over 64 KiB is 413; a JSON body is 415; nothing emitted."""
    drift_id, _ = drift_and_alert(server)
    url = link(server, drift_id)
    big = httpx.post(url.split("?")[0], data=form(token_of(url), reason="x" * 70_000))
    assert big.status_code == 413
    js = httpx.post(
        url.split("?")[0], content=json.dumps(form(token_of(url))), headers={"Content-Type": "application/json"}
    )
    assert js.status_code == 415
    assert answers(server) == []


def test_without_a_feedback_secret_the_page_says_it_is_not_set_up(tmp_path: Path) -> None:
    """No [serve] feedback_secret: 503 page, never an unchecked form."""
    s = Server(tmp_path, 'token = "env:POET_TEST_TOKEN_A"\n')
    try:
        drift_id, _ = drift_and_alert(s)
        r = httpx.get(link(s, drift_id))
        assert r.status_code == 503 and "feedback_secret" in r.text
    finally:
        s.stop()
