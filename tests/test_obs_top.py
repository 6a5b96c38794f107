"""``poetctl top``: one JSON snapshot for scripts, and the live view in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from daemon_helpers.harness import run_cli, write_config

from poetctl import Permanent
from poetctl.backends.fs.owner import current_owner
from poetctl.observability.metrics import DaemonMetrics
from poetctl.observability.top import quantile
from poetctl.observability.wiring import StatsFile
from poetctl.router import EventRouter
from poetctl.testing import FakeClock, Harness

REPO = Path(__file__).resolve().parent.parent
FAILER = (
    "def register(router):\n"
    "    def h(e):\n"
    "        raise RuntimeError('boom')\n"
    "    router.subscribe('system.health', h, name='failer')\n"
)


def _live_daemon(sp: Path) -> None:
    """This test process poses as a running daemon: a heartbeat and a stats file (20 ev/s, 20 ms each)."""
    clock = FakeClock()
    m = DaemonMetrics(clock=clock)
    h = Harness(clock=clock, middleware=[m])

    def pager(e: object) -> None:
        clock.advance(0.02)

    def bad(e: object) -> None:
        raise Permanent("nope")

    h.router.subscribe("system.metrics", pager, name="pager")
    h.router.subscribe("system.health", bad, name="bad")
    stats = StatsFile(sp, m, clock)
    for _ in range(10):
        h.router.emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    h.run_until_idle()
    stats.write(clock())
    for _ in range(100):
        h.router.emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    h.router.emit("system.health", {"service": "s", "status": "healthy"})
    h.run_until_idle()
    stats.write(stats.ring[0][0] + 5.0)  # 100 handled in 5 s: 20/s
    owner = current_owner()
    beats = sp / "run" / "daemons"
    beats.mkdir(parents=True, exist_ok=True)
    beat = {
        "owner": owner,
        "pid": os.getpid(),
        "host": owner.split(".")[0],
        "started_at": time.time() - 60,
        "last_beat": time.time(),
        "inflight": 0,
        "counts": {"processed": 110, "dead": 1},
    }
    (beats / f"{owner}.json").write_bytes(orjson.dumps(beat))


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A spool with pending events, one real dead letter (from a daemon --once run) and a 'live' daemon."""
    sp = tmp_path / "spool"
    r = EventRouter(spool=sp)
    dead_id = r.emit("system.health", {"service": "s", "status": "healthy"})
    mod = tmp_path / "failer.py"
    mod.write_text(FAILER)
    cfg = write_config(tmp_path, max_attempts=1)
    res = run_cli(
        tmp_path,
        "--spool",
        str(sp),
        "daemon",
        "--once",
        "--no-builtin-handlers",
        "--handlers",
        str(mod),
        "--config",
        str(cfg),
    )
    assert res.returncode == 1, res.stderr
    for _ in range(3):
        r.emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    _live_daemon(sp)
    yield sp, dead_id


def test_quantile_matches_prometheus_interpolation() -> None:
    """histogram_quantile's linear interpolation inside the bucket; None when empty."""
    assert quantile(0.5, (1.0, 2.0), [0, 10, 0]) == 1.5
    assert quantile(0.9, (1.0, 2.0), [5, 5, 0]) == pytest.approx(1.8)
    assert quantile(0.5, (1.0,), [0, 0]) is None


def test_top_once_json_is_one_parsable_snapshot(busy: tuple[Path, str], tmp_path: Path) -> None:
    """top --once -o json: rates from the stats file, handler percentiles and errors, daemons, dead letters."""
    sp, dead_id = busy
    res = run_cli(tmp_path, "--spool", str(sp), "top", "--once", "-o", "json")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert snap["rates"]["handled"] == 20.0  # 100 events in 5 s
    assert snap["counts"]["pending"] == 3 and snap["counts"]["dead"] == 1
    pager = snap["handlers"]["pager"]
    assert pager["runs"] == 110 and 10.0 <= pager["p50_ms"] <= 25.0 and pager["errors"] == 0
    assert snap["handlers"]["bad"]["errors"] == 1
    (d,) = snap["daemons"]
    assert d["alive"] and d["pid"] == os.getpid() and d["heartbeat_age_seconds"] < 60
    assert [x["id"] for x in snap["recent_dead"]] == [dead_id]
    assert snap["recent_dead"][0]["handler"] == "failer" and "boom" in snap["recent_dead"][0]["error"]


def test_top_without_a_spool_is_exit_66(tmp_path: Path) -> None:
    """No spool: one-line error, exit 66."""
    res = run_cli(tmp_path, "--spool", str(tmp_path / "none"), "top", "--once")
    assert res.returncode == 66 and "Traceback" not in res.stderr, res.stderr


def _wait(what: str, cond: Callable[[], bool], timeout: float = 60.0, show: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{show()}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux missing")
@pytest.mark.parametrize("key", ["q", "C-c"])
def test_top_live_in_a_real_terminal_shows_rates_and_quits(busy: tuple[Path, str], tmp_path: Path, key: str) -> None:
    """In tmux: the live view shows the rates, handlers and daemons; `q` or Ctrl-C quits with exit 0."""
    sp, _ = busy
    sock = f"poetctl-top-{os.getpid()}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]  # a private server, no user config (its size is ours)
    cfg = write_config(tmp_path, name="top.toml", lease_seconds=3600)  # the posed heartbeat stays fresh
    done = tmp_path / "top.exit"
    cmd = (
        f"cd {shlex.quote(str(tmp_path))} && env -u COLUMNS -u LINES PYTHONPATH={shlex.quote(str(REPO))} "
        f"{shlex.quote(sys.executable)} -m poetctl --spool {shlex.quote(str(sp))} "
        f"--config {shlex.quote(str(cfg))} top; "
        f"echo $? > {shlex.quote(str(done))}; sleep 120"
    )
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "160", "-y", "48", cmd], check=True, timeout=30)

    def pane() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True, timeout=30
        ).stdout

    try:
        _wait("the live view", lambda: "handle 20.0/s" in pane() and "pager" in pane(), show=pane)
        screen = pane()
        assert "emit" in screen and "lag" in screen and "recent dead letters" in screen and "failer" in screen
        subprocess.run([*tmux, "send-keys", "-t", "top", key], check=True, timeout=30)
        _wait("top to exit", done.exists)
        _wait("the exit code", lambda: done.read_text().strip() != "")
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)


def test_added_rate_is_the_spools_growth_between_refreshes(tmp_path: Path) -> None:
    """The live view's emit rate: events added to the spool (by anyone) per second since the last refresh."""
    from poetctl.observability.top import snapshot

    sp = tmp_path / "spool"
    r = EventRouter(spool=sp)
    r.emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    t0 = time.time()
    first = snapshot(sp, now=t0)
    assert first["rates"]["added"] is None  # one look: no rate yet
    for _ in range(5):
        r.emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    assert snapshot(sp, now=t0 + 2.0, prev=first)["rates"]["added"] == 2.5
