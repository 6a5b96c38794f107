"""``poetctl serve``: POST /events (tokens, batches, limits), health, readiness, metrics, logging, config."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import clean_env, cli_argv
from serve_harness import DEFAULT_TABLE, TOKENS, Server, spool_events

TOK_A, TOK_B = TOKENS["POET_TEST_TOKEN_A"], TOKENS["POET_TEST_TOKEN_B"]
HEALTH = {"type": "system.health", "payload": {"service": "trainer", "status": "healthy"}}
BAD_HEALTH = {"type": "system.health", "payload": {"service": "trainer", "status": "bad"}}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_json(server: Server, doc: object, token: str | None = TOK_A, **kw: object) -> httpx.Response:
    headers = {"Content-Type": "application/json", **(auth(token) if token else {})}
    return httpx.post(server.url + "/events", content=json.dumps(doc).encode(), headers=headers, **kw)  # type: ignore[arg-type]


def post_lines(server: Server, docs: list[object], token: str = TOK_A, **kw: object) -> httpx.Response:
    body = "".join(json.dumps(d) + "\n" for d in docs).encode()
    headers = {"Content-Type": "application/x-ndjson", **auth(token)}
    return httpx.post(server.url + "/events", content=body, headers=headers, **kw)  # type: ignore[arg-type]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path, DEFAULT_TABLE + "rate_limit = 1000\nrate_burst = 1000\n")
    yield s
    s.stop()


def test_one_event_is_emitted_and_its_id_returned(server: Server) -> None:
    """A valid event with a valid token is committed and the answer carries its id."""
    r = post_json(server, {**HEALTH, "correlation_id": "c-1"})
    assert r.status_code == 200, r.text
    ids = r.json()["ids"]
    [ev] = spool_events(server.spool)
    assert ids == [ev["id"]] and ev["correlation_id"] == "c-1" and ev["type"] == "system.health"


def test_every_configured_token_is_accepted_for_rotation(server: Server) -> None:
    """Both tokens of [serve] token work (old and new during a rotation)."""
    assert post_json(server, HEALTH, TOK_A).status_code == 200
    assert post_json(server, HEALTH, TOK_B).status_code == 200
    assert len(spool_events(server.spool)) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOK_A}x"},
        {"Authorization": f"Basic {TOK_A}"},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "longer", "basic", "empty"],
)
def test_a_request_without_a_valid_token_is_refused_and_emits_nothing(server: Server, headers: dict[str, str]) -> None:
    """No, a wrong, or a non-bearer token: 401 JSON with a Bearer challenge, nothing in the spool."""
    r = httpx.post(
        server.url + "/events", content=json.dumps(HEALTH), headers={"Content-Type": "application/json", **headers}
    )
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert spool_events(server.spool) == []


def test_a_batch_is_emitted_in_order(server: Server) -> None:
    """A JSON-lines batch: every line committed, ids in line order (envelope ids kept)."""
    r = post_lines(server, [HEALTH, {**HEALTH, "id": "batch-2"}, HEALTH])
    assert r.status_code == 200, r.text
    ids = r.json()["ids"]
    assert len(ids) == 3 and ids[1] == "batch-2" and r.json()["added"] == 3
    assert {e["id"] for e in spool_events(server.spool)} == set(ids)


def test_an_invalid_line_refuses_the_whole_batch_naming_line_and_field(server: Server) -> None:
    """One bad line: 422 naming its line and field; no line of the batch is emitted."""
    r = post_lines(server, [HEALTH, BAD_HEALTH, HEALTH, {"type": "system.health"}])
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_event" and "nothing was written" in body["message"]
    assert body["errors"][0]["line"] == 2 and body["errors"][0]["field"] == "$.payload.status"
    assert body["errors"][1]["line"] == 4
    assert spool_events(server.spool) == []


def test_bare_payloads_take_their_type_from_the_query(server: Server) -> None:
    """?type= makes each line a payload of that type (like emit --batch --type)."""
    r = post_lines(server, [HEALTH["payload"], HEALTH["payload"]], **{"params": {"type": "system.health"}})
    assert r.status_code == 200, r.text
    assert [e["type"] for e in spool_events(server.spool)] == ["system.health"] * 2


def test_an_existing_id_is_a_no_op_and_said_so(server: Server) -> None:
    """Re-posting an event with the same id adds nothing and lists it as existing."""
    doc = {**HEALTH, "id": "once-only"}
    assert post_json(server, doc).json()["added"] == 1
    again = post_json(server, doc).json()
    assert again["added"] == 0 and again["existing"] == ["once-only"]
    assert len(spool_events(server.spool)) == 1


def test_an_event_over_the_size_limit_is_refused_with_413(tmp_path: Path) -> None:
    """A body over max_event_bytes: 413 whether declared (Content-Length) or streamed (chunked); nothing emitted."""
    (tmp_path / "x").mkdir()
    s = Server(tmp_path / "x", DEFAULT_TABLE + "rate_limit = 0\n")
    try:
        big = {**HEALTH, "payload": {**HEALTH["payload"], "details": {"blob": "x" * 2_000_000}}}
        r = post_json(s, big)
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        def chunks() -> Iterator[bytes]:
            data = json.dumps(big).encode()
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        r2 = httpx.post(
            s.url + "/events", content=chunks(), headers={"Content-Type": "application/json", **auth(TOK_A)}
        )
        assert r2.status_code == 413 and r2.json()["error"] == "too_large"
        line = json.dumps(big)
        r3 = post_lines(s, [HEALTH, json.loads(line)])
        assert r3.status_code == 413 and r3.json()["line"] == 2
        assert spool_events(s.spool) == []
    finally:
        s.stop()


def test_the_rate_limit_per_token_answers_429_with_retry_after(tmp_path: Path) -> None:
    """Past the burst, a token gets 429 + Retry-After and nothing is emitted; the other token still works."""
    s = Server(tmp_path, DEFAULT_TABLE + "rate_limit = 0.001\nrate_burst = 2\n")
    try:
        assert post_json(s, HEALTH).status_code == 200
        assert post_json(s, HEALTH).status_code == 200
        r = post_json(s, HEALTH)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        assert len(spool_events(s.spool)) == 2
        assert post_json(s, HEALTH, TOK_B).status_code == 200
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [("text/plain", b"{}", 415), ("application/json", b"", 400), ("application/json", b"{not json", 422)],
)
def test_bad_bodies_get_clear_4xx_json(server: Server, content_type: str, body: bytes, status: int) -> None:
    """Wrong media type 415, empty 400, not JSON 422: each a JSON error, nothing emitted."""
    r = httpx.post(server.url + "/events", content=body, headers={"Content-Type": content_type, **auth(TOK_A)})
    assert r.status_code == status and "message" in r.json()
    assert spool_events(server.spool) == []


def test_events_are_disabled_without_a_token(tmp_path: Path) -> None:
    """No [serve] token configured: POST /events is refused (403), never open to anyone."""
    s = Server(tmp_path, 'feedback_secret = "env:POET_TEST_FEEDBACK"\n')
    try:
        r = post_json(s, HEALTH, None)
        assert r.status_code == 403 and r.json()["error"] == "disabled"
        assert spool_events(s.spool) == []
    finally:
        s.stop()


def test_health_readiness_and_metrics(server: Server) -> None:
    """healthz 200; readyz 200 with the spool writable, 503 naming it when not; /metrics is Prometheus text."""
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"spool": "ok"}
    m = httpx.get(server.url + "/metrics")
    assert m.status_code == 200 and "# TYPE" in m.text and m.headers["content-type"].startswith("text/plain")
    (server.spool / "events" / "tmp").rename(server.root / "tmp-away")
    down = httpx.get(server.url + "/readyz")
    assert down.status_code == 503 and "tmp" in down.json()["checks"]["spool"]


def test_unknown_paths_and_methods_get_json(server: Server) -> None:
    """404 and 405 are JSON errors too."""
    assert httpx.get(server.url + "/nope").json()["error"] == "not_found"
    r = httpx.get(server.url + "/events")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_secrets_never_reach_the_log(server: Server) -> None:
    """Tokens (good and bad) and query strings are not in the server's log; requests are."""
    post_json(server, HEALTH, TOK_A)
    post_json(server, HEALTH, "guess-token-xyz")
    httpx.get(server.url + "/poet/feedback/abc", params={"t": "123.secret-looking-query"})
    assert server.stop() == 0  # SIGTERM: a graceful stop
    log = server.log()
    assert "POST /events 200" in log and "POST /events 401" in log
    for secret in (TOK_A, "guess-token-xyz", "secret-looking-query", "fb-secret"):
        assert secret not in log


def test_listens_on_loopback_by_default(server: Server) -> None:
    """Without --host the server binds 127.0.0.1."""
    assert server.url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    ("table", "env", "expect"),
    [
        ('token = "plain-secret"\n', {}, "[serve] token"),
        ('token = "env:POET_TEST_UNSET_VAR"\n', {}, "POET_TEST_UNSET_VAR is not set"),
        ('token = "file:/nonexistent/secret"\n', {}, "cannot read secret file"),
        ("rate_limit = -1\n", {}, "[serve] rate_limit"),
        ("colour = 1\n", {}, "unknown key [serve] colour"),
    ],
)
def test_bad_serve_configuration_exits_78_before_listening(
    tmp_path: Path, table: str, env: dict[str, str], expect: str
) -> None:
    """A literal secret, an unset secret variable, an unreadable secret file, a bad value: exit 78, one line."""
    (tmp_path / "poet.toml").write_text(f'storage_path = "spool"\n[serve]\n{table}', encoding="utf-8")
    from poetctl.spool import SpoolLayout

    SpoolLayout(tmp_path / "spool").init()
    p = subprocess.run(
        cli_argv("serve", "--port", "0"), cwd=tmp_path, env=clean_env(env), capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 78, p.stderr
    assert expect in p.stderr and "listening" not in p.stderr and "Traceback" not in p.stderr
    assert "plain-secret" not in p.stderr


def test_a_missing_spool_exits_66(tmp_path: Path) -> None:
    """serve on a path with no spool: exit 66, nothing created."""
    p = subprocess.run(
        cli_argv("serve", "--spool", tmp_path / "none", "--port", "0"),
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 66 and not (tmp_path / "none").exists()


def test_token_buckets_refill_at_the_configured_rate() -> None:
    """A bucket grants its burst, then one request per 1/rate seconds; keys are independent; rate 0 is unlimited."""
    from poetctl.serve.guards import TokenBuckets

    now = [100.0]
    b = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [b.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a") == pytest.approx(0.5)
    assert b.take("b") == 0.0
    now[0] += 0.5
    assert b.take("a") == 0.0 and b.take("a") > 0
    now[0] += 1000
    assert [b.take("a") for _ in range(3)] == [0.0] * 3 and b.take("a") > 0  # never more than the burst
    assert all(TokenBuckets(rate=0, burst=1).take("x") == 0.0 for _ in range(100))


def test_config_show_masks_the_serve_secrets(tmp_path: Path) -> None:
    """config show names [serve] secrets as env:NAME (set/unset), never their values."""
    (tmp_path / "poet.toml").write_text(
        '[serve]\ntoken = ["env:POET_TEST_TOKEN_A", "env:POET_TEST_NOT_SET"]\n', encoding="utf-8"
    )
    p = subprocess.run(
        cli_argv("config", "show"), cwd=tmp_path, env=clean_env(TOKENS), capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)["serve"]
    assert shown["token"] == ["env:POET_TEST_TOKEN_A (set)", "env:POET_TEST_NOT_SET (unset)"]
    assert TOK_A not in p.stdout


def test_a_body_that_stops_arriving_gets_408_and_emits_nothing(tmp_path: Path) -> None:
    """A client that declares a body and sends half of it is answered 408 after body_timeout; nothing emitted."""
    import socket
    from urllib.parse import urlsplit

    s = Server(tmp_path, DEFAULT_TABLE + "body_timeout = 0.5\n")
    try:
        u = urlsplit(s.url)
        body = json.dumps(HEALTH).encode()
        head = (
            f"POST /events HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {TOK_A}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection((u.hostname, u.port), timeout=60) as sock:
            sock.sendall(head + body[:10])
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert spool_events(s.spool) == []
    finally:
        s.stop()


def test_readiness_checks_nats_when_it_is_configured(tmp_path: Path) -> None:
    """hybrid (the spool, forwarded): /readyz is 503 naming NATS while nothing listens, 200 once it accepts."""
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]  # bound but not listening: connections are refused
    top = f'delivery_mode = "hybrid"\n[nats]\nservers = ["nats://127.0.0.1:{port}"]\n'
    s = Server(tmp_path, DEFAULT_TABLE, top=top)
    try:
        down = httpx.get(s.url + "/readyz")
        assert down.status_code == 503 and "NATS unreachable" in down.json()["checks"]["nats"]
        probe.listen(1)
        up = httpx.get(s.url + "/readyz")
        assert up.status_code == 200 and up.json()["checks"] == {"spool": "ok", "nats": "ok"}
    finally:
        s.stop()
        probe.close()


def test_other_commands_do_not_load_the_web_stack() -> None:
    """Building the emit/status commands, or the whole --help app, imports neither starlette nor uvicorn."""
    code = (
        "import sys\n"
        "from poetctl.cli import build_app\n"
        "build_app('emit'); build_app('status'); build_app()\n"
        "print(sorted(m for m in ('starlette', 'uvicorn', 'anyio', 'prometheus_client') if m in sys.modules))\n"
    )
    import sys

    p = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_a_token_can_come_from_a_file_next_to_the_config(tmp_path: Path) -> None:
    """token = "file:secrets/t" (relative to poet.toml, trailing newline stripped) authenticates; env tokens too."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "t").write_text("file-token-7d1e\n", encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()  # the server's cwd: the path must not be taken relative to it
    s = Server(tmp_path, 'token = ["file:secrets/t", "env:POET_TEST_TOKEN_A"]\n', cwd=tmp_path / "elsewhere")
    try:
        assert post_json(s, HEALTH, "file-token-7d1e").status_code == 200
        assert post_json(s, HEALTH, TOK_A).status_code == 200
        assert post_json(s, HEALTH, "file-token-7d1e\n".strip() + "x").status_code == 401
    finally:
        s.stop()
    assert "file-token-7d1e" not in s.log()


def test_an_address_in_use_exits_69(tmp_path: Path) -> None:
    """Another process holds the port: one line naming the address, exit 69, no traceback."""
    import socket

    from poetctl.spool import SpoolLayout

    SpoolLayout(tmp_path / "spool").init()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        p = subprocess.run(
            cli_argv("serve", "--spool", tmp_path / "spool", "--port", str(port)),
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close()
    assert p.returncode == 69, p.stderr
    assert f"127.0.0.1:{port}" in p.stderr and "Traceback" not in p.stderr
