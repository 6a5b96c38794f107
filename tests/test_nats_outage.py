"""A `daemon --mode nats` rides out its server's crash: it keeps running, handles every event and keeps key order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.natsserver import NatsServer
from tests.test_nats_group import wait_for

EVENTS = int(os.environ.get("POET_TEST_OUTAGE_EVENTS", "1500"))
KEYS = 6

HANDLERS = """
import json, os, time
def register(router):
    fd = os.open(os.environ["POET_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    def handle(event):
        time.sleep(0.002)  # slow enough that the crash comes while work remains
        os.write(fd, (json.dumps([event.correlation_id, event.payload["metrics"]["i"]]) + "\\n").encode())
    router.subscribe("system.metrics", handle, name="record")
"""


def handled(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            k, i = json.loads(line)
        except ValueError:  # the line being written
            continue
        out.append((k, i))
    return out


def test_nats_daemon_rides_out_a_server_crash_and_restart(tmp_path: Path) -> None:
    """SIGKILL the only server mid-stream and restart it: the daemon lives on, every event is handled, in key order."""
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport
    from poetctl.config import Config
    from poetctl.router import EventRouter

    server = NatsServer(tmp_path / "nats").start()
    (tmp_path / "poet.toml").write_text("[daemon]\nworkers = 1\n[nats]\nack_wait = 2\nlease_ttl = 4\n")
    (tmp_path / "h.py").write_text(HANDLERS)
    log = tmp_path / "handled.log"
    settings = NatsSettings(servers=(server.url,), ack_wait=2, lease_ttl=4)

    def publish(lo: int, hi: int) -> None:
        t = NatsTransport(settings, setup=True)
        try:
            router = EventRouter(transport=t, config=Config())
            for start in range(lo, hi, 250):
                router.emit_many(
                    [
                        {
                            "type": "system.metrics",
                            "payload": {"service": "s", "metrics": {"i": i}},
                            "correlation_id": f"k{i % KEYS}",
                        }
                        for i in range(start, min(hi, start + 250))
                    ]
                )
        finally:
            t.close()

    env = {**os.environ, "POET_NATS_URL": server.url, "POET_TEST_LOG": str(log)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "poetctl", "daemon", "--mode", "nats", "--no-builtin-handlers", "--handlers", "h.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        publish(0, EVENTS // 2)
        wait_for(lambda: len(handled(log)) >= EVENTS // 20, "handling under way", [daemon])
        assert len({i for _, i in handled(log)}) < EVENTS // 2, "everything was handled before the crash"
        server.kill()
        server.start()  # same port, same store
        publish(EVENTS // 2, EVENTS)  # the rest after the restart
        wait_for(lambda: {i for _, i in handled(log)} >= set(range(EVENTS)), "every event handled", [daemon])
        assert daemon.poll() is None
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.stderr.read().decode(errors="replace")[-2000:] if daemon.stderr else ""
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        server.stop()
    # Per key, the first handling of each event follows emit order (a crash may repeat an event, never reorder).
    first: dict[str, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for k, i in handled(log):
        if i not in seen:
            seen.add(i)
            first[k].append(i)
    for k, order in first.items():
        assert order == sorted(order), f"key {k} handled out of emit order"
