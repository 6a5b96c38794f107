"""The router in three parts (envelope builder, subscription registry, publisher over a transport):
one Quarantined class, EventRouter(transport=...), and the per-subscription time limit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from poetctl import EventRouter
from poetctl.backends.memory import MemoryTransport
from poetctl.errors import InvalidData, UsageError
from poetctl.event import Event
from poetctl.testing import FakeClock, Harness
from poetctl.transport import Quarantined, State

HEALTH = {"service": "s", "status": "healthy"}


def test_one_quarantined_class_for_every_backend() -> None:
    """poetctl.router.Quarantined is poetctl.transport.Quarantined (one class to catch, on any backend)."""
    import poetctl.router

    assert poetctl.router.Quarantined is Quarantined


def test_a_quarantined_id_is_refused_the_same_way_on_the_spool_and_in_memory(spool: Path) -> None:
    """Publishing an id that sits in quarantine raises the one Quarantined (65) on both backends."""
    mem = MemoryTransport()
    mem.put_raw("00000000-0000-7000-8000-000000000001", b"not json")
    mem.consumer("c").fetch(10)  # the fetch quarantines it
    (spool / "events" / "corrupt" / "00000000-0000-7000-8000-000000000001.json").write_bytes(b"not json")
    for router in (EventRouter(transport=mem), EventRouter(spool=spool)):
        with pytest.raises(Quarantined) as info:
            router.emit("system.health", HEALTH, id="00000000-0000-7000-8000-000000000001")
        assert info.value.exit_code == 65
        assert router.quarantine_reason("00000000-0000-7000-8000-000000000001") is not None


def test_transport_router_publishes_through_the_transport_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EventRouter(transport=...) builds, checks sizes and publishes to the transport; no spool, no layout."""
    monkeypatch.chdir(tmp_path)
    t = MemoryTransport()
    router = EventRouter(transport=t)
    eid = router.emit("system.health", HEALTH)
    assert t.state_of(eid) is State.PENDING
    assert router.emit_many([("system.health", HEALTH)] * 2)[0] != eid
    with pytest.raises(AttributeError):
        _ = router.layout  # only a spool router has one
    router.config.max_event_bytes = 100
    with pytest.raises(InvalidData, match="max_event_bytes"):
        router.emit("system.health", HEALTH)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError):
        EventRouter(tmp_path / "spool", transport=t)


def test_the_spool_router_keeps_its_layout_for_compatibility(spool: Path) -> None:
    """EventRouter(spool=...) publishes through the filesystem transport; .layout is that transport's layout."""
    router = EventRouter(spool=spool)
    eid = router.emit("system.health", HEALTH)
    assert router.layout.root == spool and router.transport.state_of(eid) is State.PENDING
    assert (spool / "events" / "pending" / f"{eid}.json").is_file()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "5"])
def test_subscribe_refuses_a_bad_timeout(bad: object) -> None:
    """A timeout must be a positive finite number of seconds: anything else is a UsageError at subscribe."""
    router = EventRouter(transport=MemoryTransport())
    with pytest.raises(UsageError, match="timeout"):
        router.subscribe("system.health", lambda e: None, name="h", timeout=bad)  # type: ignore[arg-type]
    assert router.subscriptions == []


def test_a_subscription_timeout_fails_a_slow_handler() -> None:
    """subscribe(..., timeout=S): the daemon fails a run longer than S (HandlerTimeout) without a timeouts map."""
    clock = FakeClock()
    h = Harness(clock=clock, max_attempts=1)
    release = threading.Event()

    def slow(e: Event) -> None:
        clock.advance(10)  # the run takes "10 s" of the daemon's clock
        release.wait(60)

    h.router.subscribe("system.health", slow, name="slow", timeout=5)
    assert h.router.subscriptions[0].timeout == 5.0
    eid = h.router.emit("system.health", HEALTH)
    h.drain()
    release.set()
    info = h.dead_letter(eid)
    assert info is not None and info["error"].startswith("HandlerTimeout: handler 'slow' ran longer than its timeout")
    h.daemon.workers[0].runner.close()
