"""Alerts on the system itself: conditions with thresholds, damping, firing/resolved system.alert events."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from poetctl.observability.alerts import (
    AlertEvaluator,
    AlertMiddleware,
    AlertSettings,
    Sample,
    router_emitter,
    sample_from,
)
from poetctl.testing import FakeClock, Harness
from poetctl.transport import Fetched

SETTINGS = AlertSettings(interval=10, for_seconds=60, clear_seconds=60, max_lag=300, warn_lag=60, min_daemons=1)


def _evaluator(settings: AlertSettings = SETTINGS) -> tuple[AlertEvaluator, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    return AlertEvaluator(settings, sent.append), sent


def _lag(at: float, lag: float, pending: int = 10) -> Sample:
    return Sample(at=at, lag_seconds=lag, pending=pending)


def test_lag_alert_fires_once_after_holding_then_resolves() -> None:
    """high_lag fires only after holding for_seconds, once while it holds, and resolves after clear_seconds."""
    ev, sent = _evaluator()
    t = 1000.0
    for i in range(6):  # 0..50 s above max_lag: not yet
        ev.evaluate(_lag(t + 10 * i, 400))
    assert [p for p in sent if p["condition"] == "high_lag"] == []
    for i in range(6, 20):  # 60 s and on: fires once
        ev.evaluate(_lag(t + 10 * i, 400))
    fired = [p for p in sent if p["condition"] == "high_lag"]
    assert len(fired) == 1 and fired[0]["status"] == "firing" and fired[0]["severity"] == "critical"
    assert fired[0]["since"] == t and fired[0]["value"] == 400 and fired[0]["threshold"] == 300
    t2 = t + 200
    for i in range(6):  # clear for 50 s: still firing
        ev.evaluate(_lag(t2 + 10 * i, 5))
    assert len([p for p in sent if p["condition"] == "high_lag"]) == 1 and ev.firing == ["high_lag"]
    ev.evaluate(_lag(t2 + 60, 5))
    resolved = [p for p in sent if p["condition"] == "high_lag"][1:]
    assert len(resolved) == 1 and resolved[0]["status"] == "resolved" and ev.firing == []


def test_flapping_lag_is_damped() -> None:
    """A condition that clears for a moment neither fires (restarts its timer) nor resolves (while firing)."""
    ev, sent = _evaluator()
    t = 0.0
    for i in range(30):  # holds 50 s, clears 10 s, again: never 60 s in a row
        ev.evaluate(_lag(t + 10 * i, 5 if i % 6 == 5 else 400))
    assert [p for p in sent if p["condition"] == "high_lag"] == []
    t = 1000.0
    for i in range(8):
        ev.evaluate(_lag(t + 10 * i, 400))
    assert len(sent) == 1  # fired
    for i in range(8, 40):  # blips clear every other 50 s: stays firing, never resolves
        ev.evaluate(_lag(t + 10 * i, 5 if i % 6 == 0 else 400))
    assert [p["status"] for p in sent if p["condition"] == "high_lag"] == ["firing"]


def test_growing_lag_is_a_warning() -> None:
    """growing_lag: lag above warn_lag and pending grew over the window; warning severity."""
    ev, sent = _evaluator(AlertSettings(for_seconds=30, lag_window=60, warn_lag=60, max_lag=10_000))
    for i in range(20):
        ev.evaluate(Sample(at=10.0 * i, lag_seconds=100 + i, pending=100 + 10 * i))
    grow = [p for p in sent if p["condition"] == "growing_lag"]
    assert len(grow) == 1 and grow[0]["severity"] == "warning"
    assert not [p for p in sent if p["condition"] == "high_lag"]


def test_fsck_loss_alert_fires() -> None:
    """message_loss fires (critical) when the last fsck found lost events, and only then."""
    ev, sent = _evaluator(AlertSettings(for_seconds=0))
    ev.evaluate(Sample(at=0, fsck_loss=0))
    assert sent == []
    ev.evaluate(Sample(at=10, fsck_loss=3))
    assert len(sent) == 1 and sent[0]["condition"] == "message_loss" and sent[0]["severity"] == "critical"
    assert sent[0]["value"] == 3


@pytest.mark.parametrize("how", [["--repair"], ["--record"]])
def test_fsck_loss_alert_from_a_real_fsck_report(tmp_path: Path, how: list[str]) -> None:
    """fsck --repair or --record leaves run/fsck.json; the sample reads its loss (a plain check writes nothing)."""
    from daemon_helpers.harness import events_dir, run_cli

    from poetctl.observability.backlog import spool_figures
    from poetctl.router import EventRouter

    sp = tmp_path / "spool"
    EventRouter(spool=sp).emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    (events_dir(sp, "pending") / "0190a5b4-0000-7000-8000-000000000001.json").write_text("{not json")
    r = run_cli(tmp_path, "--spool", str(sp), "fsck")
    assert r.returncode == 1 and not (sp / "run" / "fsck.json").exists()
    r = run_cli(tmp_path, "--spool", str(sp), "fsck", *how)
    assert "Traceback" not in r.stderr, r.stderr
    s = sample_from(100.0, spool_figures(sp), None)
    assert s.fsck_loss == 1
    ev, sent = _evaluator(AlertSettings(for_seconds=0, min_daemons=0))
    ev.evaluate(s)
    # Without --repair the corrupt file still sits in pending/, so lag may fire beside the loss.
    assert "message_loss" in [p["condition"] for p in sent]


@pytest.mark.parametrize(
    ("sample", "condition"),
    [
        (Sample(at=0, daemons_alive=0, daemons_stale=0), "daemon_down"),
        (Sample(at=0, daemons_alive=2, daemons_stale=1), "daemon_down"),
        (Sample(at=0, disk_free_ratio=0.02), "disk_nearly_full"),
        (Sample(at=0, rss_bytes=2 << 30), "resource_pressure"),
        (Sample(at=0, open_files=950, open_files_limit=1024), "resource_pressure"),
    ],
)
def test_single_sample_conditions(sample: Sample, condition: str) -> None:
    """Each point-in-time condition fires from a sample beyond its threshold (for_seconds 0)."""
    ev, sent = _evaluator(AlertSettings(for_seconds=0, max_rss_mb=1024))
    ev.evaluate(sample)
    assert [p["condition"] for p in sent] == [condition]


def test_error_rate_and_latency_compare_a_window() -> None:
    """error_rate and latency_degradation judge the runs of the last window against thresholds."""
    ev, sent = _evaluator(AlertSettings(for_seconds=0, lag_window=60, min_runs=20, error_rate=0.1))
    ev.evaluate(Sample(at=0, handler_runs=1000, handler_errors=0, handler_seconds=10.0))
    ev.evaluate(Sample(at=60, handler_runs=1100, handler_errors=30, handler_seconds=60.0))
    names = sorted(p["condition"] for p in sent)
    # 30 of 100 failed; recent mean 0.5 s vs long-run 0.055 s
    assert names == ["error_rate", "latency_degradation"]


def test_alert_middleware_emits_system_alert_events_through_the_loop() -> None:
    """On the generic loop: the evaluator runs from on_fetch when due and emits valid system.alert events."""
    clock = FakeClock()
    lag = {"v": 400.0}
    holder: dict[str, Harness] = {}

    def sampler(now: float) -> Sample:
        return Sample(at=now, lag_seconds=lag["v"], pending=1)

    settings = AlertSettings(interval=10, for_seconds=30, clear_seconds=30)
    ev = AlertEvaluator(settings, lambda p: router_emitter(holder["h"].router)(p), clock=clock)
    h = Harness(clock=clock, middleware=[AlertMiddleware(ev, sampler, clock)])
    holder["h"] = h
    seen: list[dict[str, Any]] = []
    h.router.subscribe("system.alert", lambda e: seen.append(e.payload), name="pager")
    for _ in range(10):
        h.run_until_idle()
        clock.advance(10)
    lag["v"] = 0.0
    for _ in range(10):
        h.run_until_idle()
        clock.advance(10)
    h.run_until_idle()
    assert [(p["condition"], p["status"]) for p in seen] == [("high_lag", "firing"), ("high_lag", "resolved")]
    alerts = h.events(types=["system.alert"])
    assert all(s.event is not None and s.event.topic == "poet/system/alerts" for s in alerts)


def test_alerts_config_is_checked(tmp_path: Path) -> None:
    """[alerts] keys are checked like every table: a bad value is a config error naming the key."""
    from poetctl.config import load_config
    from poetctl.errors import ConfigError

    f = tmp_path / "poet.toml"
    f.write_text('[alerts]\nmax_lag = "10m"\nfor_seconds = 5\n')
    cfg = load_config(f)
    s = AlertSettings.from_config(dict(cfg.alerts))
    assert s.max_lag == 600 and s.for_seconds == 5
    f.write_text("[alerts]\ndisk_min_free = 3\n")
    with pytest.raises(ConfigError, match="disk_min_free"):
        load_config(f)


def test_a_slow_look_never_stalls_the_loop_and_looks_do_not_pile_up() -> None:
    """In the background (the daemon's way), a sampler that blocks (a million pending to list) leaves on_fetch
    returning at once; while it runs no second look starts; once it ends, its alert is evaluated."""
    clock = FakeClock()
    release = threading.Event()
    started: list[float] = []
    payloads: list[dict[str, Any]] = []

    def sampler(now: float) -> Sample:
        started.append(now)
        release.wait(60)
        return Sample(at=now, lag_seconds=400.0, pending=1)

    ev = AlertEvaluator(AlertSettings(interval=10, for_seconds=0, clear_seconds=30), payloads.append, clock=clock)
    mw = AlertMiddleware(ev, sampler, clock, background=True)
    clock.advance(10)
    mw.on_fetch(Fetched())  # returns although the sampler blocks
    assert mw.looking is not None and mw.looking.is_alive()
    clock.advance(10)
    mw.on_fetch(Fetched())  # due again, but the first look still runs: no second one
    assert len(started) == 1
    release.set()
    mw.looking.join(60)
    assert [(p["condition"], p["status"]) for p in payloads] == [("high_lag", "firing")]
