"""[limits] in nats mode, on a real nats-server: max_pending / max_pending_bytes, shared source rates, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nats_cli_helpers import cli, project, server
from tests.natsserver import NatsServer

__all__ = ["project", "server"]  # the fixtures, imported for pytest

HEALTH = '{"service": "svc", "status": "healthy"}'
EX_TEMPFAIL = 75


@pytest.fixture
def limited(project: Path, server: NatsServer) -> object:
    """The project set up on the server, with ``[limits]`` lines added by the test (call it with them)."""

    def add(lines: str) -> Path:
        toml = project / "poet.toml"
        toml.write_text(toml.read_text() + f"[limits]\n{lines}\n")
        r = cli(["nats", "setup"], project, server.url)
        assert r.returncode == 0, r.stderr
        return project

    return add


def emit(project: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(["emit", "--mode", "nats", "system.health", HEALTH, *extra], project, url)


def stream_messages(url: str) -> int:
    from poetctl.backends.nats.link import Link
    from poetctl.backends.nats.settings import NatsSettings

    link = Link(NatsSettings(servers=(url,)))
    try:

        async def go() -> int:
            return int((await link.jsm.stream_info("POET")).state.messages)

        return int(link.run(go()))
    finally:
        link.close()


def test_emit_over_max_pending_exits_75_and_publishes_nothing(limited: object, server: NatsServer) -> None:
    """Past max_pending, emit --wait 0 exits 75 with the spool's message; nothing reaches the stream."""
    project = limited("max_pending = 2")  # type: ignore[operator]
    for _ in range(2):
        r = emit(project, server.url)
        assert r.returncode == 0, r.stderr
    r = emit(project, server.url, "--wait", "0")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert "spool full: 2 pending (limit 2); retry later" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert stream_messages(server.url) == 2


def test_emit_over_max_pending_bytes_exits_75(limited: object, server: NatsServer) -> None:
    """Bytes count too: an event that would take pending past max_pending_bytes is refused."""
    project = limited("max_pending_bytes = 600")  # type: ignore[operator]
    assert emit(project, server.url).returncode == 0
    r = emit(project, server.url, "--wait", "0")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert "bytes pending (limit 600); retry later" in r.stderr
    assert stream_messages(server.url) == 1


def server_times(url: str, first_id: str) -> tuple[float, float]:
    """(when the first event's processed state was written, when the stream's second message arrived): server time."""
    from poetctl.backends.nats.link import Link
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.subjects import kv_key

    link = Link(NatsSettings(servers=(url,)))
    try:

        async def go() -> tuple[float, float]:
            st = await link.jsm.get_last_msg("KV_POET_STATE", f"$KV.POET_STATE.{kv_key(first_id)}")
            assert json.loads(st.data or b"{}")["s"] == "processed"
            second = await link.jsm.get_msg("POET", seq=2)
            return _ts(st.time), _ts(second.time)

        return link.run(go())  # type: ignore[no-any-return]
    finally:
        link.close()


def _ts(t: object) -> float:
    import datetime

    if isinstance(t, datetime.datetime):
        return t.timestamp()
    return datetime.datetime.fromisoformat(str(t).replace("Z", "+00:00")).timestamp()


def test_emit_waits_for_room_a_nats_daemon_makes(limited: object, server: NatsServer) -> None:
    """Full: emit --wait waits; it publishes only after a nats daemon has processed the backlog, and exits 0."""
    project = limited("max_pending = 1")  # type: ignore[operator]
    # A keyed event keeps a state entry (a fresh one's processed state is derived, with no time of its own).
    first = emit(project, server.url, "--id", "limits-first")
    assert first.returncode == 0
    waiting = subprocess.Popen(
        [sys.executable, "-m", "poetctl", "emit", "--mode", "nats", "system.health", HEALTH, "--wait", "120"],
        cwd=project,
        env={**os.environ, "POET_NATS_URL": server.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        d = cli(["daemon", "--mode", "nats", "--once", "--no-builtin-handlers"], project, server.url)
        assert d.returncode == 0, d.stderr
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert out.strip() and stream_messages(server.url) == 2
    processed_at, second_at = server_times(server.url, first.stdout.strip())
    assert second_at >= processed_at  # it waited for the room, not published at once


def test_batch_stops_at_the_first_event_that_does_not_fit(limited: object, server: NatsServer) -> None:
    """emit --batch publishes what fits (its ids printed), then exits 75 saying how many were committed."""
    project = limited("max_pending = 5")  # type: ignore[operator]
    for _ in range(2):
        assert emit(project, server.url).returncode == 0
    b = project / "b.jsonl"
    b.write_text("".join(HEALTH + "\n" for _ in range(6)))
    r = cli(
        ["emit", "--mode", "nats", "--batch", str(b), "--type", "system.health", "--wait", "0"], project, server.url
    )
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert len(r.stdout.split()) == 3
    assert "spool full: 5 pending (limit 5)" in r.stderr and "3 of 6 events were committed" in r.stderr
    assert stream_messages(server.url) == 5


def test_library_raises_backpressure_on_nats(limited: object, server: NatsServer) -> None:
    """router.emit on a NATS transport raises poetctl.Backpressure (75); emit_many is all or nothing."""
    import poetctl
    from poetctl.cli.mode import nats_transport
    from poetctl.config import load_config
    from poetctl.router import EventRouter

    project = limited("max_pending = 1")  # type: ignore[operator]
    os.environ["POET_NATS_URL"] = server.url
    try:
        cfg = load_config(project / "poet.toml")
        t = nats_transport(cfg)
    finally:
        del os.environ["POET_NATS_URL"]
    try:
        router = EventRouter(transport=t, config=cfg)
        router.emit("system.health", {"service": "s", "status": "healthy"})
        with pytest.raises(poetctl.Backpressure) as info:
            router.emit("system.health", {"service": "s", "status": "healthy"}, wait=0)
        assert info.value.exit_code == 75 and "spool full: 1 pending (limit 1)" in info.value.message
        with pytest.raises(poetctl.Backpressure):
            router.emit_many([("system.health", {"service": "s", "status": "healthy"})] * 2, wait=0)
    finally:
        t.close()
    assert stream_messages(server.url) == 1


def test_source_rate_is_shared_across_processes_in_kv(limited: object, server: NatsServer) -> None:
    """'external.*' = '1/m': a second emit of that source from another process exits 75; status names the rule."""
    project = limited('[limits.sources]\n"external.*" = "1/m"')  # type: ignore[operator]
    assert emit(project, server.url, "--source", "external.pagerduty").returncode == 0
    r = emit(project, server.url, "--source", "external.slack", "--wait", "0")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert "source 'external.slack' is over its rate limit ([limits.sources] \"external.*\")" in r.stderr
    assert emit(project, server.url, "--source", "poet.generator").returncode == 0
    assert stream_messages(server.url) == 2
    s = cli(["status", "--mode", "nats", "-o", "json"], project, server.url)
    assert s.returncode == 0, s.stderr
    lim = json.loads(s.stdout)["limits"]
    assert [t["pattern"] for t in lim["throttled"]] == ["external.*"] and lim["throttled"][0]["refused_total"] == 1


def test_status_shows_fullness_on_nats(limited: object, server: NatsServer) -> None:
    """status --mode nats reports pending against max_pending and bytes against max_pending_bytes."""
    project = limited("max_pending = 4\nmax_pending_bytes = 1000000")  # type: ignore[operator]
    assert emit(project, server.url).returncode == 0
    s = cli(["status", "--mode", "nats", "-o", "json"], project, server.url)
    assert s.returncode == 0, s.stderr
    lim = json.loads(s.stdout)["limits"]
    assert lim["pending"] == 1 and lim["max_pending"] == 4 and lim["pending_fill"] == 0.25
    assert lim["max_pending_bytes"] == 1000000 and 0 < lim["pending_bytes"] < 2000
    t = cli(["status", "--mode", "nats", "-o", "table"], project, server.url)
    assert "limits: 1 of 4 pending (25%)" in t.stdout, t.stdout


def test_rate_bucket_cas_holds_under_concurrent_emitters(limited: object, server: NatsServer) -> None:
    """'external.*' = '1/m' (a burst of 1) and 8 emitters on 8 connections at once: exactly 1 gets through."""
    import threading

    import poetctl
    from poetctl.cli.mode import nats_transport
    from poetctl.config import load_config
    from poetctl.router import EventRouter

    project = limited('[limits.sources]\n"external.*" = "1/m"')  # type: ignore[operator]
    os.environ["POET_NATS_URL"] = server.url
    try:
        cfg = load_config(project / "poet.toml")
        transports = [nats_transport(cfg) for _ in range(8)]
    finally:
        del os.environ["POET_NATS_URL"]
    results: list[str] = []
    start = threading.Barrier(8)

    def one(t: object) -> None:
        router = EventRouter(transport=t, config=cfg)  # type: ignore[arg-type]
        start.wait()
        try:
            router.emit("system.health", {"service": "s", "status": "healthy"}, source="external.x", wait=0)
            results.append("ok")
        except poetctl.Backpressure:
            results.append("75")

    threads = [threading.Thread(target=one, args=(t,)) for t in transports]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    finally:
        for t in transports:
            t.close()
    assert sorted(results) == ["75"] * 7 + ["ok"]  # without the compare-and-set several read 1 token
    assert stream_messages(server.url) == 1
