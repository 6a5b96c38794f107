"""Priority delivery on every backend: high first, low never starved, a key's order untouched."""

from __future__ import annotations

import pytest

from poetctl.testing import Harness
from poetctl.transport import Consumer, Transport

from .kits import Emit, Kit, MakeHarness


def needs_priority(backend: Kit) -> None:
    if not backend.priority:
        pytest.skip(f"{backend.name} fetches in stream order: priority classes not implemented there yet")


def drain(c: Consumer, limit: int) -> list[list[str]]:
    """Fetch (and ack) until nothing is left; the ids of each fetch."""
    batches = []
    while True:
        got = c.fetch(limit).deliveries
        if not got:
            return batches
        batches.append([d.id for d in got])
        for d in got:
            c.ack(d)


def test_high_is_fetched_before_normal_published_earlier(backend: Kit, transport: Transport, make_event: Emit) -> None:
    """A high event of a fresh key comes out in the first fetch although 30 normal events are older."""
    needs_priority(backend)
    normal = [make_event(f"n{i}") for i in range(30)]
    transport.publish(normal)
    high = make_event("urgent", priority="high")
    transport.publish([high])
    first = transport.consumer().fetch(1).deliveries
    assert [d.id for d in first] == [high.event.id]


def test_priority_never_reorders_a_key(backend: Kit, transport: Transport, make_event: Emit) -> None:
    """A high event of a key with an unfinished normal event waits for it; other keys do not."""
    filler = [make_event(f"f{i}") for i in range(10)]
    a1 = make_event("a")
    transport.publish([a1, *filler])
    a2 = make_event("a", priority="high")
    b = make_event("b", priority="high")
    transport.publish([a2, b])
    c = transport.consumer()
    order = [i for batch in drain(c, 3) for i in batch]
    assert order.index(a1.event.id) < order.index(a2.event.id)
    if backend.priority:
        assert order.index(b.event.id) < order.index(filler[-1].event.id)  # b jumped: another key


def test_a_key_keeps_its_order_low_then_normal(transport: Transport, make_event: Emit) -> None:
    """A normal event never passes an earlier low event of its key, within one fetch or across fetches."""
    a1 = make_event("a", priority="low")
    a2 = make_event("a")
    a3 = make_event("a", priority="high")
    transport.publish([a1, a2, a3, *[make_event(f"f{i}") for i in range(8)]])
    c = transport.consumer()
    order = [i for batch in drain(c, 2) for i in batch]
    assert [i for i in order if i in {a1.event.id, a2.event.id, a3.event.id}] == [
        a1.event.id,
        a2.event.id,
        a3.event.id,
    ]


def test_low_is_never_starved(backend: Kit, transport: Transport, make_event: Emit) -> None:
    """With many normal events waiting, every fetch that takes normal work also takes a low one."""
    needs_priority(backend)
    lows = [make_event(f"low{i}", priority="low") for i in range(3)]
    transport.publish(lows)
    transport.publish([make_event(f"n{i}") for i in range(200)])
    batches = drain(transport.consumer(), 10)
    low_ids = {x.event.id for x in lows}
    first_three = [next(i for i, b in enumerate(batches) if x in b) for x in sorted(low_ids)]
    # Three low events in the first few fetches, not after the 200 normal ones (20 fetches).
    assert max(first_three) <= 4


def test_low_waits_behind_normal_when_both_wait(backend: Kit, transport: Transport, make_event: Emit) -> None:
    """Low events published first come out after most of the normal ones when both wait (their share is small)."""
    needs_priority(backend)
    lows = [make_event(f"low{i}", priority="low") for i in range(20)]
    transport.publish(lows)
    normals = [make_event(f"n{i}") for i in range(20)]
    transport.publish(normals)
    first = {d.id for d in transport.consumer().fetch(20).deliveries}
    assert len(first & {x.event.id for x in normals}) > len(first & {x.event.id for x in lows})


def test_follow_ups_inherit_priority(make_harness: MakeHarness) -> None:
    """A handler's follow-up carries its cause's priority unless the handler sets one."""
    h: Harness = make_harness()
    seen: dict[str, str | None] = {}

    def on_health(event: object) -> None:
        if event.payload["service"] != "root":  # type: ignore[attr-defined]
            return
        h.router.emit("system.health", {"service": "child", "status": "healthy"}, correlation_id="c2")
        h.router.emit("system.health", {"service": "told", "status": "healthy"}, priority="low")

    def record(event: object) -> None:
        svc = event.payload["service"]  # type: ignore[attr-defined]
        seen[svc] = event.priority  # type: ignore[attr-defined]

    h.router.subscribe("system.health", on_health, name="spawn")
    h.router.subscribe("system.health", record, name="record")
    h.router.emit("system.health", {"service": "root", "status": "healthy"}, priority="high")
    h.run_until_idle()
    assert seen == {"root": "high", "child": "high", "told": "low"}
