"""Issue 10's leftovers: the daemon on its router's transport, recoveries counted wherever they happen,
and the one quarantine-reason line of every backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from poetctl import EventRouter
from poetctl.backends.fs.transport import FsTransport
from poetctl.backends.memory import MemoryTransport
from poetctl.daemon.core import Daemon, DaemonOptions
from poetctl.testing import FakeClock
from poetctl.transport import Outgoing

HEALTH = {"service": "s", "status": "healthy"}


def _outgoing(router: EventRouter, key: str) -> Outgoing:
    ev, keyed = router.build("system.health", HEALTH, correlation_id=key)
    return Outgoing(ev, ev.to_json() + b"\n", keyed)


def test_the_daemon_consumes_through_its_routers_transport(spool: Path) -> None:
    """Daemon uses the router's FsTransport and clock: a follow-up the router publishes wakes its consumer."""
    router = EventRouter(spool=spool)
    clock = FakeClock()
    d = Daemon(router, DaemonOptions(once=True, watch=False), clock=clock)
    try:
        assert d.transport is router.transport
        assert d.consumer.clock is clock  # the daemon's clock, though the router's transport reads time.time
        d.consumer.wake.clear()
        router.emit("system.health", HEALTH)
        assert d.consumer.wake.is_set()
    finally:
        d.loop.close()


def test_the_spool_daemon_refuses_another_transport_naming_it() -> None:
    """Daemon (poetctl daemon's wiring) on a router over another transport raises TypeError naming that transport."""
    with pytest.raises(TypeError, match="MemoryTransport"):
        Daemon(EventRouter(transport=MemoryTransport()))


def test_a_bucket_takeover_between_rescans_reports_what_it_recovered(tmp_path: Path) -> None:
    """fs: a fetch whose bucket lock finds a dead owner's events (no rescan due) counts them in Fetched.recovered."""
    clock = FakeClock()
    transport = FsTransport(tmp_path / "spool", clock=clock)
    router = EventRouter(transport=transport)
    first, second, later = (_outgoing(router, "a") for _ in range(3))
    c1, c2 = transport.consumer(watch=False), transport.consumer(watch=False)
    try:
        assert c2.fetch(10).deliveries == []  # c2's rescan is done; the next one is rescan_interval away
        transport.publish([first, second])
        assert [d.id for d in c1.fetch(10).deliveries] == [first.event.id, second.event.id]
        c1._simulate_death()
        transport.publish([later])
        took = c2.fetch(10)  # the clock has not moved: only the bucket takeover can recover
        assert [d.id for d in took.deliveries] == [first.event.id, second.event.id, later.event.id]
        assert took.recovered == 2
        assert c2.fetch(10).recovered == 0
    finally:
        c2.close()


def test_a_quarantine_reason_is_the_same_bounded_line_on_the_spool_and_in_memory(tmp_path: Path) -> None:
    """router.quarantine_reason and Quarantined's message give one printable line of <= 200 chars on both backends."""
    from poetctl.transport import Quarantined

    detail = "line one\nline two\x1b[31m red " + "x" * 400
    lines = []
    for transport in (MemoryTransport(), FsTransport(tmp_path / "spool")):
        router = EventRouter(transport=transport)
        item = _outgoing(router, "a")
        transport.publish([item])
        c = transport.consumer()
        (d,) = c.fetch(10).deliveries
        c.quarantine(d, "bad_schema", detail)
        c.close()
        line = router.quarantine_reason(item.event.id)
        assert line is not None and line.startswith("bad_schema: line one line two\\x1b[31m red xxx")
        assert len(line) <= 200 and line.isprintable()
        with pytest.raises(Quarantined) as refused:
            router.emit("system.health", HEALTH, id=item.event.id)
        assert line in str(refused.value) and "\n" not in str(refused.value)
        lines.append(line)
    assert lines[0] == lines[1]
