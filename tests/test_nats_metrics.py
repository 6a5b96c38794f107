"""Metrics and ``top`` in nats and hybrid mode: a real daemon scraped with httpx, parsed with prometheus_client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.natscluster import wait_until
from tests.natsserver import NatsServer

TOML = (
    "[nats]\npartitions = 4\nack_wait = 1\nlease_ttl = 2\nconnect_timeout = 2\n"
    "[daemon]\nmax_attempts = 2\nbackoff_base = 0\nbackoff_cap = 0\n[alerts]\nenabled = false\n"
)
HANDLERS = """
import os, time
def register(router):
    def seen(event):
        gate = os.environ["POET_TEST_GATE"]
        if event.payload.get("service") == "slow":
            open(gate + ".entered", "w").close()
            while not os.path.exists(gate):
                time.sleep(0.01)
        if event.payload.get("status") == "unhealthy":
            raise ValueError("poison")
    router.subscribe("system.health", seen, name="seen")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "poet.toml").write_text(TOML)
    (tmp_path / "h.py").write_text(HANDLERS)
    return tmp_path


@pytest.fixture
def server(tmp_path: Path, project: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as s:
        yield s


def _env(project: Path, url: str, mode: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
    e.update(
        POET_NATS_URL=url,
        POET_MODE=mode,
        POET_SPOOL=str(project / "spool"),
        POET_TEST_GATE=str(project / "gate"),
    )
    return e


def _cli(project: Path, url: str, mode: str, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "poetctl", *args],
        cwd=project,
        env=_env(project, url, mode),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def _start_daemon(project: Path, url: str, mode: str) -> tuple[subprocess.Popen[str], str]:
    """A daemon with --metrics-addr on a free port; (process, metrics URL from its start line)."""
    d = subprocess.Popen(
        [
            *(sys.executable, "-m", "poetctl", "daemon", "--metrics-addr", "127.0.0.1:0", "--workers", "1"),
            *("--handlers", str(project / "h.py"), "--no-builtin-handlers", "--log-format", "json"),
        ],
        cwd=project,
        env=_env(project, url, mode),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert d.stderr is not None
    for line in d.stderr:
        rec = json.loads(line)
        if rec.get("metrics"):
            # Keep reading stderr so the daemon never blocks on a full pipe.
            import threading

            threading.Thread(target=lambda: [None for _ in d.stderr or ()], daemon=True).start()
            return d, str(rec["metrics"])
    raise AssertionError(f"daemon exited {d.wait()} without a metrics line")


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def _stop(d: subprocess.Popen[str]) -> None:
    if d.poll() is None:
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(60)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()


def test_nats_daemon_metrics_show_consumer_lag_owner_and_dlq_and_top_reads_them(
    project: Path, server: NatsServer
) -> None:
    """daemon --mode nats --metrics-addr: counters match (5 handled, 1 dead-lettered), the backlog gauges come
    from NATS (ack pending and the owner of the busy partition while a handler runs, the DLQ count); top --mode
    nats --once -o json shows the daemon, its handler's runs and the dead letter."""
    url = server.url
    _cli(project, url, "nats", "nats", "setup")
    slow = _cli(project, url, "nats", "emit", "system.health", '{"service":"slow","status":"healthy"}').strip()
    d, metrics = _start_daemon(project, url, "nats")
    try:
        wait_until(lambda: (project / "gate.entered").exists() or d.poll() is not None, "the slow handler")
        assert d.poll() is None

        def busy() -> bool:
            s = _scrape(metrics)
            return _sum(s, "poetctl_nats_consumer_ack_pending") == 1 and _sum(s, "poetctl_nats_partition_owned") == 1

        wait_until(busy, "ack pending 1 and an owned partition in the scrape")
        s = _scrape(metrics)
        [(_, owned)] = [k for k in s if k[0] == "poetctl_nats_partition_owned"]
        assert {k for k, _ in owned} == {"partition", "owner"}
        assert _sum(s, "poetctl_spool_events", state="inflight") == 1
        assert _sum(s, "poetctl_daemons", status="alive") == 1
        assert {dict(ls)["partition"] for n, ls in s if n == "poetctl_nats_consumer_pending"} == {"0", "1", "2", "3"}
        (project / "gate").write_text("")
        ids = [
            _cli(project, url, "nats", "emit", "system.health", json.dumps({"service": f"s{i}", "status": "healthy"}))
            for i in range(4)
        ]
        poison = _cli(project, url, "nats", "emit", "system.health", '{"service":"p","status":"unhealthy"}').strip()
        assert len(ids) == 4

        def settled() -> bool:
            s = _scrape(metrics)
            return (
                _sum(s, "poetctl_events_handled_total") == 5
                and _sum(s, "poetctl_events_dead_lettered_total") == 1
                and _sum(s, "poetctl_nats_stream_messages", stream="dead") == 1
                and _sum(s, "poetctl_nats_consumer_pending") == 0
                and _sum(s, "poetctl_nats_consumer_ack_pending") == 0
            )

        wait_until(settled, "5 handled and 1 dead letter in the scrape")
        s = _scrape(metrics)
        assert _sum(s, "poetctl_handler_duration_seconds_count", handler="seen") == 7  # 5 + 2 attempts of the poison
        assert _sum(s, "poetctl_spool_events", state="dead") == 1
        assert _sum(s, "poetctl_nats_partition_lag_seconds") == 0

        def top_sees_it() -> bool:
            snap = json.loads(_cli(project, url, "nats", "top", "--once", "-o", "json"))
            return bool(snap["daemons"]) and snap["handlers"].get("seen", {}).get("runs") == 7

        wait_until(top_sees_it, "top to see the daemon's stats")
        snap = json.loads(_cli(project, url, "nats", "top", "--once", "-o", "json"))
        assert snap["counts"]["dead"] == 1 and snap["counts"]["pending"] == 0
        assert [x["id"] for x in snap["recent_dead"]] == [poison]
        assert snap["recent_dead"][0]["error"] == "ValueError: poison"
        assert snap["handlers"]["seen"]["errors"] == 2
        [dm] = snap["daemons"]
        assert dm["alive"] and dm["processed"] == 5 and dm["dead"] == 1 and "handled" in dm["rates"]
        assert [p["partition"] for p in snap["partitions"]] == [0, 1, 2, 3]
        assert slow not in {x["id"] for x in snap["recent_dead"]}
    finally:
        (project / "gate").write_text("")
        _stop(d)
    assert d.returncode == 0


def test_hybrid_daemon_serves_the_forward_backlog(project: Path) -> None:
    """daemon --mode hybrid with NATS unreachable: the forwarder's backlog (3 events) is a gauge, with its age."""
    url = "nats://127.0.0.1:1"
    _cli(project, url, "local_only", "init")
    d, metrics = _start_daemon(project, url, "hybrid")
    try:
        for i in range(3):
            _cli(
                project,
                url,
                "local_only",
                "emit",
                "system.health",
                json.dumps({"service": f"h{i}", "status": "healthy"}),
            )
        wait_until(
            lambda: _sum(_scrape(metrics), "poetctl_forward_backlog_events") == 3, "a forward backlog of 3 events"
        )
        assert _sum(_scrape(metrics), "poetctl_forward_oldest_age_seconds") > 0
    finally:
        _stop(d)
