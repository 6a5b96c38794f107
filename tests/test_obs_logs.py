"""Log records of the generic loop (LogMiddleware) and the formatters: JSON fields, safety, console form."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from poetctl import Permanent
from poetctl.daemon import log
from poetctl.daemon.middleware import Middleware
from poetctl.daemon.outcomes import Dead, Failed
from poetctl.observability.daemonlog import LogContext
from poetctl.observability.logs import install, redact
from poetctl.testing import FakeClock, Harness


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The daemon logger writing JSON lines into a buffer (restored afterwards)."""
    buf = io.StringIO()
    saved = (list(log.logger.handlers), log.logger.level, log.logger.propagate)
    install(log.logger, logging.DEBUG, "json", stream=buf)
    yield buf
    log.logger.handlers[:] = saved[0]
    log.logger.setLevel(saved[1])
    log.logger.propagate = saved[2]


def _records(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in buf.getvalue().splitlines()]


class DaemonLike(Middleware):
    """Logs outcomes the way the daemon's reporting does: ids, handler, attempt - no correlation, no duration."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def after_handle(self, event: object, handler: object, seconds: float, error: BaseException | None) -> None:
        self.error = error or self.error

    def on_outcome(self, delivery: object, outcome: object) -> None:
        ev = delivery.event  # type: ignore[attr-defined]
        if isinstance(outcome, Failed | Dead) and self.error is not None:
            handler = outcome.attempt.handler if isinstance(outcome, Failed) else outcome.info["handler"]
            n = outcome.attempt.attempt if isinstance(outcome, Failed) else outcome.info["attempts"]
            log.handler_failed(ev.id, ev.type, handler, self.error, n, 2)
            self.error = None
        if isinstance(outcome, Dead):
            i = outcome.info
            log.dead_lettered(ev.id, ev.type, outcome.reason, i["handler"], i["attempts"], i["error"])


def test_handler_failure_and_dead_letter_carry_correlation_and_duration(captured: io.StringIO) -> None:
    """On the generic loop with LogContext: failure (WARN) and dead letter (ERROR) records get
    correlation_id and duration_ms although the logging middleware does not pass them."""
    clock = FakeClock()
    h = Harness(clock=clock, max_attempts=2, middleware=[LogContext(), DaemonLike()])

    def slow_fail(e: object) -> None:
        clock.advance(0.25)  # 250 ms on the daemon's clock
        raise RuntimeError("downstream timeout")

    h.router.subscribe("system.health", slow_fail, name="pager")
    eid = h.router.emit("system.health", {"service": "s", "status": "healthy"}, correlation_id="corr-42")
    h.drain()
    recs = _records(captured)
    fails = [r for r in recs if r["msg"] == "handler failed"]
    assert [r["attempt"] for r in fails] == [1, 2]
    for r in fails:
        assert r["level"] == "WARN" and r["event_id"] == eid and r["correlation_id"] == "corr-42"
        assert r["type"] == "system.health" and r["handler"] == "pager" and r["duration_ms"] == 250.0
        assert r["error"] == "RuntimeError: downstream timeout" and isinstance(r["ts"], str)
    dead = [r for r in recs if r["msg"] == "dead-lettered"]
    assert len(dead) == 1 and dead[0]["level"] == "ERROR" and dead[0]["reason"] == "attempts_exhausted"
    assert dead[0]["correlation_id"] == "corr-42" and dead[0]["attempt"] == 2 and dead[0]["handler"] == "pager"


def test_permanent_failure_logs_once_then_dead(captured: io.StringIO) -> None:
    """A Permanent failure: one failure record (attempt 1) and the dead letter (reason permanent)."""
    h = Harness(middleware=[LogContext(), DaemonLike()])

    def no(e: object) -> None:
        raise Permanent("HTTP 404")

    h.router.subscribe("system.health", no, name="hook")
    h.router.emit("system.health", {"service": "s", "status": "healthy"})
    h.drain()
    msgs = [(r["msg"], r.get("attempt"), r.get("reason")) for r in _records(captured)]
    assert msgs == [("handler failed", 1, None), ("dead-lettered", 1, "permanent")]


def test_successes_log_nothing(captured: io.StringIO) -> None:
    """Handled events write no record and leave no context behind (the hot path does nothing)."""
    log._context.run = None  # earlier tests' failures ran on this thread
    h = Harness(middleware=[LogContext(), DaemonLike()])
    h.router.subscribe("system.health", lambda e: None, name="ok")
    for _ in range(5):
        h.router.emit("system.health", {"service": "s", "status": "healthy"})
    h.drain()
    assert captured.getvalue() == "" and getattr(log._context, "run", None) is None


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET https://alice:pa55word@api.example/v1 failed", "pa55word"),
        ("401 for ?api_key=AKIA1234567890&x=1", "AKIA1234567890"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc", "eyJhbGciOiJIUzI1NiJ9"),
        ('config {"token": "tok_9f8e7d6c"}', "tok_9f8e7d6c"),
        ("routing_key=R0UT1NGKEY42 rejected", "R0UT1NGKEY42"),
        ("password: 'correct horse'", "correct horse"),
    ],
)
def test_secrets_are_masked(text: str, secret: str, captured: io.StringIO) -> None:
    """Credentials in error texts never reach a record (URL userinfo, tokens, keys, passwords)."""
    assert secret not in redact(text) and "***" in redact(text)
    log.warning("handler failed", error=text)
    assert secret not in captured.getvalue()


def test_console_form_and_control_characters() -> None:
    """The console form: ``poetctl: warning: msg k=v``, coloured only on a terminal; escapes made visible."""
    buf = io.StringIO()
    lg = logging.getLogger("poetctl.test.console")
    install(lg, logging.INFO, "console", stream=buf)
    lg.warning("%s", "x", extra={"poet": {"msg": "handler failed", "event_id": "e1", "error": "a\x1b[2Jb c"}})
    line = buf.getvalue().strip()
    assert line == 'poetctl: warning: handler failed event_id=e1 error="a\\x1b[2Jb c"'


def test_json_is_the_default_off_a_terminal() -> None:
    """auto: JSON lines on a pipe or file (a StringIO is not a terminal)."""
    buf = io.StringIO()
    lg = logging.getLogger("poetctl.test.auto")
    install(lg, logging.INFO, "auto", stream=buf)
    lg.info("%s", "x", extra={"poet": {"msg": "daemon stopped", "processed": 3}})
    rec = json.loads(buf.getvalue())
    assert rec["msg"] == "daemon stopped" and rec["level"] == "INFO" and rec["processed"] == 3
