"""Outbound HTTP: what each answer or failure of a real server means to the daemon, and the circuit breaker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from fakeapis import FakeAPI, refused_url, serve

from poetctl import Permanent, Retry
from poetctl.backends.fs.layout import SpoolLayout
from poetctl.integrations.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, breaker_states
from poetctl.integrations.http import MAX_RETRY_AFTER, Outbound, Transient, retry_after


def ok_api() -> FakeAPI:
    return FakeAPI(lambda req: (200, b'{"ok": true}', {"content-type": "application/json"}))


def out(breaker: Breaker | None = None, read: float = 2.0) -> Outbound:
    return Outbound("hook", connect_timeout=1.0, read_timeout=read, breaker=breaker)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_a_2xx_is_returned_with_its_body() -> None:
    """A 2xx answer comes back with status and JSON body; the request carried our body and headers."""
    with serve(ok_api()) as api:
        a = out().request("POST", api.url + "/x", body=b'{"a":1}', headers={"content-type": "application/json"})
        assert (a.status, a.json()) == (200, {"ok": True})
        req = api.wait_for(1)[0]
        assert (req.method, req.path, req.body) == ("POST", "/x", b'{"a":1}')
        assert req.headers["user-agent"] == "poetctl"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient(status: int) -> None:
    """A 5xx without Retry-After goes to the daemon's backoff schedule (Transient), naming the status."""
    with serve(ok_api()) as api:
        api.fail(status, b"upstream broke")
        with pytest.raises(Transient, match=f"hook: HTTP {status}: upstream broke"):
            out().request("POST", api.url)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(status: int) -> None:
    """429 and 5xx with Retry-After: 7 ask the daemon to come back in exactly 7 s."""
    with serve(ok_api()) as api:
        api.fail(status, b"slow down", {"retry-after": "7"})
        with pytest.raises(Retry) as info:
            out().request("POST", api.url)
        assert info.value.after == 7.0


def test_retry_after_as_an_http_date_is_honoured() -> None:
    """A Retry-After HTTP date becomes the seconds until then."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    with serve(ok_api()) as api:
        api.fail(429, b"", {"retry-after": format_datetime(when, usegmt=True)})
        with pytest.raises(Retry) as info:
            out().request("POST", api.url)
        assert 100 < info.value.after <= 120


def test_retry_after_parsing_edges() -> None:
    """Bad values are ignored, past dates mean now, huge delays are capped."""
    now = 1_800_000_000.0
    assert retry_after(None, now) is None
    assert retry_after("soon", now) is None
    assert retry_after("-5", now) is None
    assert retry_after("99999999", now) == MAX_RETRY_AFTER
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00", now) is None  # no zone: not an HTTP date


def test_429_without_retry_after_is_transient() -> None:
    """A 429 with no usable Retry-After falls back to the backoff schedule."""
    with serve(ok_api()) as api:
        api.fail(429, b"rate limited")
        with pytest.raises(Transient, match="429"):
            out().request("POST", api.url)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_are_permanent_with_the_body(status: int) -> None:
    """Other 4xx fail permanently; the error quotes the service's answer, escaped and truncated."""
    body = b'{"errors":["bad \x1b[31m field"]}' + b"x" * 2000
    with serve(ok_api()) as api:
        api.fail(status, body)
        with pytest.raises(Permanent) as info:
            out().request("POST", api.url + "/secret-token-path")
    msg = str(info.value)
    assert msg.startswith(f"hook: HTTP {status}: ")
    assert "\x1b" not in msg and "\\x1b" in msg
    assert len(msg) < 400
    assert "secret-token-path" not in msg


def test_a_redirect_is_not_followed() -> None:
    """A 3xx is a permanent failure: the URL must be fixed, the location is not called."""
    with serve(ok_api()) as api:
        api.fail(302, b"", {"location": api.url + "/elsewhere"})
        with pytest.raises(Permanent, match="redirect"):
            out().request("POST", api.url)
        assert [r.path for r in api.wait_for(1)] == ["/"]


def test_connection_refused_is_transient_without_the_url() -> None:
    """Nothing listening: a transient failure naming the integration, not the URL (it may hold a token)."""
    url = refused_url() + "/T000/SECRET"
    with pytest.raises(Transient) as info:
        out().request("POST", url)
    assert "cannot reach" in str(info.value)
    assert "SECRET" not in str(info.value)


def test_a_hanging_server_times_out() -> None:
    """No answer within the read timeout: transient."""
    with serve(ok_api()) as api:
        api.hang()
        with pytest.raises(Transient, match="timed out"):
            out(read=0.3).request("POST", api.url)


def test_a_slowly_trickled_body_is_cut_off() -> None:
    """A body sent a byte at a time (each within the read timeout) is abandoned at the overall deadline."""
    with serve(ok_api()) as api:
        api.slow_body()
        with pytest.raises(Transient, match="too slowly"):
            out(read=0.3).request("POST", api.url)


# -- the circuit breaker --------------------------------------------------------------------
def test_the_breaker_opens_after_consecutive_failures_and_stops_calling(spool: Path) -> None:
    """After N failures in a row the endpoint is left alone: Retry(after=cooldown), no request is made."""
    clock = Clock()
    b = Breaker("hook", layout=SpoolLayout(spool), failures=3, cooldown=30, clock=clock)
    with serve(ok_api()) as api:
        api.fail(500, times=3)
        for _ in range(3):
            with pytest.raises(Transient):
                out(b).request("POST", api.url)
        assert b.state()["state"] == OPEN
        with pytest.raises(Retry) as info:
            out(b).request("POST", api.url)
        assert info.value.after == 30
        assert len(api.answered()) == 3  # the fourth call never reached the server


def test_half_open_probe_closes_on_success_and_reopens_on_failure(spool: Path) -> None:
    """After the cooldown one probe goes through: success closes the breaker, failure reopens it."""
    clock = Clock()
    b = Breaker("hook", layout=SpoolLayout(spool), failures=1, cooldown=10, clock=clock)
    with serve(ok_api()) as api:
        api.fail(503)
        with pytest.raises(Transient):
            out(b).request("POST", api.url)
        clock.t += 10
        b2 = Breaker("hook", layout=SpoolLayout(spool), failures=1, cooldown=10, clock=clock)  # another process
        b2.before()
        assert b.state()["state"] == HALF_OPEN
        with pytest.raises(Retry):  # while the probe is out, others wait
            out(b).request("POST", api.url)
        b2.failure("HTTP 503")
        assert b.state()["state"] == OPEN
        clock.t += 10
        out(b).request("POST", api.url)  # the probe succeeds
        assert b.state()["state"] == CLOSED and b.state()["failures"] == 0


def test_a_4xx_or_429_does_not_open_the_breaker(spool: Path) -> None:
    """A service that answers (even 'no') is alive: 4xx and 429 never trip the breaker."""
    b = Breaker("hook", layout=SpoolLayout(spool), failures=1, cooldown=60)
    with serve(ok_api()) as api:
        api.fail(400)
        api.fail(429, b"", {"retry-after": "1"})
        with pytest.raises(Permanent):
            out(b).request("POST", api.url)
        with pytest.raises(Retry):
            out(b).request("POST", api.url)
    assert b.state()["state"] == CLOSED


def test_breaker_state_is_shared_through_the_spool_and_listed(spool: Path) -> None:
    """The state file under run/breakers/ is what another process (status) reads; a damaged one counts as closed."""
    layout = SpoolLayout(spool)
    Breaker("pagerduty", layout=layout, failures=1).failure("timed out")
    Breaker("odd name/../x", layout=layout, failures=5).failure("HTTP 500")
    states = {s["name"]: s for s in breaker_states(layout)}
    assert states["pagerduty"]["state"] == OPEN and states["pagerduty"]["last_error"] == "timed out"
    assert states["odd name/../x"]["state"] == CLOSED and states["odd name/../x"]["failures"] == 1
    assert sorted(p.name for p in (spool / "run" / "breakers").iterdir()) == [
        "pagerduty.json",
        "x-97fc76e6d78d99ba.json",
    ]
    (spool / "run" / "breakers" / "pagerduty.json").write_text("{not json")
    assert Breaker("pagerduty", layout=layout).state()["state"] == CLOSED
    assert "pagerduty" not in {s["name"] for s in breaker_states(layout)}


def test_status_shows_the_breakers(run_cli, spool: Path) -> None:  # type: ignore[no-untyped-def]
    """`poetctl status -o json` has a breakers list with each endpoint's state."""
    Breaker("slack", layout=SpoolLayout(spool), failures=1).failure("HTTP 503")
    r = run_cli("status", "--spool", spool, "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(b["name"], b["state"]) for b in doc["breakers"]] == [("slack", "open")]
