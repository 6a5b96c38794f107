"""Prometheus metrics of the daemon (a loop middleware), of emitting processes, and the textfile."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from poetctl import Permanent
from poetctl.observability.backlog import EXPORTED as BACKLOG_EXPORTED
from poetctl.observability.backlog import spool_figures, textfile, write_textfile
from poetctl.observability.metrics import EXPORTED, DaemonMetrics, EmitMetrics, instrument_router
from poetctl.testing import FakeClock, Harness


def samples(registry: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back with prometheus_client's parser: (name, labels) -> value."""
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _harness(clock: FakeClock, metrics: DaemonMetrics) -> Harness:
    return Harness(clock=clock, max_attempts=2, backoff_base=1.0, middleware=[metrics])


def test_counters_and_histograms_match_what_happened() -> None:
    """N handled, M dead-lettered, retries and errors by type/handler; histogram counts = handler runs."""
    clock = FakeClock()
    m = DaemonMetrics(clock=clock)
    h = _harness(clock, m)

    def ok(e: object) -> None:
        clock.advance(0.003)  # the handler "takes" 3 ms on the daemon's clock

    def bad(e: object) -> None:
        raise Permanent("no")

    h.router.subscribe("system.metrics", ok, name="ok")
    h.router.subscribe("system.health", bad, name="bad")
    for i in range(7):
        h.router.emit("system.metrics", {"service": "s", "metrics": {"n": i}})
    for _ in range(3):
        h.router.emit("system.health", {"service": "s", "status": "healthy"})
    clock.advance(2.0)  # every event waited 2 s before its handler started
    h.drain()
    s = samples(m.registry(process=False))
    assert s[("poetctl_events_handled_total", (("type", "system.metrics"),))] == 7
    assert s[("poetctl_events_dead_lettered_total", (("reason", "permanent"), ("type", "system.health")))] == 3
    assert s[("poetctl_handler_errors_total", (("handler", "bad"),))] == 3
    assert s[("poetctl_events_claimed_total", ())] == 10
    assert s[("poetctl_handler_duration_seconds_count", (("handler", "ok"),))] == 7
    assert s[("poetctl_handler_duration_seconds_bucket", (("handler", "ok"), ("le", "0.0025")))] == 0
    assert s[("poetctl_handler_duration_seconds_bucket", (("handler", "ok"), ("le", "0.005")))] == 7
    assert s[("poetctl_handler_duration_seconds_sum", (("handler", "ok"),))] == pytest.approx(0.021, abs=1e-6)
    # emit -> start: >= 2 s for everything (waited 2 s), the ok handler's later events waited a little more
    assert s[("poetctl_emit_to_handle_seconds_bucket", (("handler", "ok"), ("le", "1.0")))] == 0
    assert s[("poetctl_emit_to_handle_seconds_bucket", (("handler", "ok"), ("le", "5.0")))] == 7
    assert s[("poetctl_inflight_events", ())] == 0


def test_retries_expiry_and_inflight() -> None:
    """A failing handler's retries count per type; parked retries are in flight; expired events count."""
    clock = FakeClock()
    m = DaemonMetrics(clock=clock)
    h = Harness(clock=clock, max_attempts=3, middleware=[m])

    def flaky(e: object) -> None:
        raise RuntimeError("down")

    h.router.subscribe("system.health", flaky, name="flaky")
    h.router.subscribe("system.metrics", lambda e: None, name="noop")
    h.router.emit("system.health", {"service": "s", "status": "healthy"})
    h.router.emit("system.metrics", {"service": "s", "metrics": {"n": 1}}, expires_at=clock() + 1)
    clock.advance(5)
    h.run_until_idle()
    s = samples(m.registry(process=False))
    assert s[("poetctl_events_retried_total", (("type", "system.health"),))] == 1
    assert s[("poetctl_events_expired_total", (("type", "system.metrics"),))] == 1
    assert s[("poetctl_inflight_events", ())] == 1  # the parked retry
    h.drain()
    s = samples(m.registry(process=False))
    assert s[("poetctl_events_retried_total", (("type", "system.health"),))] == 2
    assert s[("poetctl_events_dead_lettered_total", (("reason", "attempts_exhausted"), ("type", "system.health")))] == 1
    assert s[("poetctl_inflight_events", ())] == 0


def test_quarantined_input_is_counted() -> None:
    """Unreadable input the consumer quarantines counts in poetctl_events_quarantined_total."""
    clock = FakeClock()
    m = DaemonMetrics(clock=clock)
    h = _harness(clock, m)
    h.transport.put_raw("0190a5b4-0000-7000-8000-000000000001", b"{not json")  # type: ignore[attr-defined]
    h.run_until_idle()
    assert samples(m.registry(process=False))[("poetctl_events_quarantined_total", ())] == 1


def test_counts_from_several_threads_add_up() -> None:
    """Per-thread accumulators: counts made on worker threads are all in the scrape."""
    import threading

    from poetctl.backends.memory import MemoryTransport
    from poetctl.daemon.loop import Loop
    from poetctl.router import EventRouter

    m = DaemonMetrics()
    t = MemoryTransport()
    router = EventRouter(transport=t)
    seen: set[str] = set()
    router.subscribe("system.metrics", lambda e: seen.add(threading.current_thread().name), name="noop")
    for i in range(400):  # 40 keys (correlation ids), so several workers get some
        router.emit("system.metrics", {"service": "s", "metrics": {"n": i}}, correlation_id=f"c{i % 40}")
    loop = Loop(t.consumer(), router.subscriptions, router, workers=4, middleware=[m])
    assert loop.run(once=True) == 0
    s = samples(m.registry(process=False))
    assert len(seen) > 1 and s[("poetctl_events_handled_total", (("type", "system.metrics"),))] == 400
    assert s[("poetctl_handler_duration_seconds_count", (("handler", "noop"),))] == 400


def test_process_metrics_are_exported() -> None:
    """The registry includes the process's CPU, resident memory and open files."""
    names = {k[0] for k in samples(DaemonMetrics().registry())}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= names


def test_emit_side_counts_emitted_events_by_type() -> None:
    """instrument_router counts committed events by type (a duplicate id is not counted twice)."""
    h = Harness()
    em = EmitMetrics()
    instrument_router(h.router, em)
    h.router.emit("system.metrics", {"service": "s", "metrics": {"n": 1}}, id="0190a5b4-0000-7000-8000-0000000000aa")
    h.router.emit("system.metrics", {"service": "s", "metrics": {"n": 1}}, id="0190a5b4-0000-7000-8000-0000000000aa")
    h.router.emit_many([("system.health", {"service": "s", "status": "healthy"})] * 2)
    s = samples(em.registry())
    assert s[("poetctl_events_emitted_total", (("type", "system.metrics"),))] == 1
    assert s[("poetctl_events_emitted_total", (("type", "system.health"),))] == 2
    assert s[("poetctl_emit_seconds_count", ())] == 3


def test_every_exported_name_appears_in_a_scrape(tmp_path: Path) -> None:
    """EXPORTED (what dashboards and rules may use) is exactly what a busy daemon's scrape shows."""
    from poetctl.backends.fs.fsck_status import save_last
    from poetctl.router import EventRouter

    sp = tmp_path / "spool"
    EventRouter(spool=sp).emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    save_last(sp, {"summary": {"corrupt_event": 2, "orphan_tmp": 1}})
    clock = FakeClock()
    m = DaemonMetrics(clock=clock, backlog=lambda: spool_figures(sp))
    h = _harness(clock, m)
    instrument_router(h.router, m.emit)
    h.router.subscribe("system.health", lambda e: None, name="x")
    h.router.emit("system.health", {"service": "s", "status": "healthy"})
    h.run_until_idle()
    text = generate_latest(m.registry(process=False)).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    names |= {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")}  # families without samples yet
    # no daemon heartbeat and no integration breaker in this spool
    expected = (EXPORTED | BACKLOG_EXPORTED) - {
        "poetctl_last_heartbeat_timestamp_seconds",
        "poetctl_circuit_breaker_state",
    }
    # and not NATS nor hybrid (tests/test_nats_metrics.py scrapes those)
    expected = {n for n in expected if not n.startswith(("poetctl_nats_", "poetctl_forward_"))}
    assert expected - names == set()


def test_textfile_is_atomic_and_parses(tmp_path: Path) -> None:
    """status --prometheus's textfile: Prometheus text format with counts, lag and fsck loss; no tmp left."""
    from poetctl.backends.fs.fsck_status import save_last
    from poetctl.router import EventRouter

    sp = tmp_path / "spool"
    r = EventRouter(spool=sp)
    for _ in range(3):
        r.emit("system.metrics", {"service": "s", "metrics": {"n": 1}})
    save_last(sp, {"summary": {"corrupt_event": 2, "orphan_tmp": 1}})
    out = tmp_path / "prom" / "poetctl.prom"
    out.parent.mkdir()
    out.write_text("old")
    write_textfile(out, textfile(spool_figures(sp)))
    assert [p.name for p in out.parent.iterdir()] == ["poetctl.prom"]
    fams = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    pending = [s for s in fams["poetctl_spool_events"].samples if s.labels["state"] == "pending"]
    assert pending[0].value == 3
    assert fams["poetctl_fsck_loss_events"].samples[0].value == 2
    assert fams["poetctl_oldest_pending_age_seconds"].samples[0].value >= 0
    assert fams["poetctl_filesystem_size_bytes"].samples[0].value > 0


def test_circuit_breaker_states_are_exported(tmp_path: Path) -> None:
    """Each integration's breaker: 1 for its current state, 0 for the others."""
    from poetctl.router import EventRouter

    sp = tmp_path / "spool"
    EventRouter(spool=sp).layout.init()
    doc = spool_figures(sp)
    doc["breakers"] = [{"name": "pagerduty", "state": "open"}, {"name": "slack", "state": "closed"}]
    fams = {f.name: f for f in text_string_to_metric_families(textfile(doc).decode())}
    got = {(x.labels["integration"], x.labels["state"]): x.value for x in fams["poetctl_circuit_breaker_state"].samples}
    assert got[("pagerduty", "open")] == 1 and got[("pagerduty", "closed")] == 0
    assert got[("slack", "closed")] == 1 and got[("slack", "half_open")] == 0
