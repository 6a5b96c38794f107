"""A real ``poetctl daemon --metrics-addr``: scraped with httpx while it works, parsed with prometheus_client."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from daemon_helpers.harness import argv, daemon_args, run_cli, write_config
from prometheus_client.parser import text_string_to_metric_families

from poetctl.router import EventRouter

HANDLERS = """
import time
from poetctl import Permanent

def register(router):
    def ok(e):
        time.sleep(0.002)  # slow enough that a scrape lands while the daemon works
        if e.payload["metrics"]["n"] % 10 == 0:
            router.emit("system.metrics", {"service": "follow-up", "metrics": {"n": 1, "f": 1}})

    def bad(e):
        raise Permanent("HTTP 404")

    router.subscribe("system.metrics", ok, name="ok")
    router.subscribe("system.health", bad, name="bad")
"""
N, M = 300, 7  # ok events (every 10th with one follow-up), permanently failing events


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _wait(what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode} waiting for {what}:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")


def test_scrape_while_working_counts_match(tmp_path: Path) -> None:
    """Counters match N handled + follow-ups and M dead-lettered; histogram counts equal handler runs."""
    sp = tmp_path / "spool"
    r = EventRouter(spool=sp)
    r.emit_many([("system.metrics", {"service": "s", "metrics": {"n": i + 1}}) for i in range(N)])
    bad_ids = [r.emit("system.health", {"service": "s", "status": "healthy"}, correlation_id=f"c{i}") for i in range(M)]
    mod = tmp_path / "obs_handlers.py"
    mod.write_text(HANDLERS)
    cfg = write_config(tmp_path, workers=2)
    log = tmp_path / "daemon.log"
    cmd = argv(*daemon_args(sp, cfg, [mod]), "--metrics-addr", "127.0.0.1:0")
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
    try:
        url: list[str] = []

        def bound() -> bool:
            for ln in log.read_text().splitlines():
                rec = json.loads(ln)
                if rec.get("metrics"):
                    url.append(rec["metrics"])
                    return True
            return False

        _wait("the metrics address in the log", bound, proc, log)
        seen: list[float] = []

        def done() -> bool:
            s = scrape(url[0])
            seen.append(s.get(("poetctl_events_handled_total", (("type", "system.metrics"),)), 0.0))
            return seen[-1] == N + N // 10

        _wait("every event handled", done, proc, log)
        assert seen == sorted(seen), "a counter never goes down between scrapes"
        assert any(0 < v < N for v in seen) or len(seen) == 1, "scraped while it worked"
        s = scrape(url[0])
        assert s[("poetctl_events_dead_lettered_total", (("reason", "permanent"), ("type", "system.health")))] == M
        assert s[("poetctl_handler_errors_total", (("handler", "bad"),))] == M
        assert s[("poetctl_handler_duration_seconds_count", (("handler", "ok"),))] == N + N // 10
        assert s[("poetctl_handler_duration_seconds_count", (("handler", "bad"),))] == M
        assert s[("poetctl_handler_duration_seconds_bucket", (("handler", "ok"), ("le", "0.001")))] == 0  # >= 2 ms
        assert s[("poetctl_emit_to_handle_seconds_count", (("handler", "ok"),))] == N + N // 10
        assert s[("poetctl_events_emitted_total", (("type", "system.metrics"),))] == N // 10
        assert s[("poetctl_inflight_events", ())] == 0
        assert s[("process_resident_memory_bytes", ())] > 0 and s[("process_open_fds", ())] > 0
        _wait(
            "the spool gauges to catch up",
            lambda: scrape(url[0])[("poetctl_spool_events", (("state", "dead"),))] == M,
            proc,
            log,
        )
        assert scrape(url[0])[("poetctl_daemons", (("status", "alive"),))] >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    recs = [json.loads(ln) for ln in log.read_text().splitlines()]
    dead = [x for x in recs if x["msg"] == "dead-lettered"]
    assert sorted(x["event_id"] for x in dead) == sorted(bad_ids)
    assert all(x["correlation_id"].startswith("c") and x["handler"] == "bad" for x in dead)
    fails = [x for x in recs if x["msg"] == "handler failed"]
    assert len(fails) == M and all(isinstance(x["duration_ms"], float) for x in fails)
    assert not list((sp / "run" / "stats").glob("*.json")), "the stats file goes with the daemon"


def test_bad_metrics_addr_is_a_usage_error(tmp_path: Path) -> None:
    """--metrics-addr without a port: one line, exit 2."""
    sp = tmp_path / "spool"
    EventRouter(spool=sp).layout.init()
    res = run_cli(tmp_path, *daemon_args(sp, write_config(tmp_path), [], once=True), "--metrics-addr", "localhost")
    assert res.returncode == 2 and "HOST:PORT" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_metrics_addr_in_use_is_exit_69(tmp_path: Path) -> None:
    """An address already in use: one line, exit 69, nothing handled."""
    import socket

    sp = tmp_path / "spool"
    EventRouter(spool=sp).emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_cli(
            tmp_path, *daemon_args(sp, write_config(tmp_path), [], once=True), "--metrics-addr", f"127.0.0.1:{port}"
        )
    assert res.returncode == 69 and "cannot listen" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(list((sp / "events" / "pending").iterdir())) == 1
