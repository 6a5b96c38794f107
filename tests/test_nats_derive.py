"""NATS: fresh events carry no KV state entry; their state is derived from the partition consumer (derive.py)."""

from __future__ import annotations

import time
from pathlib import Path

from poetctl.backends.nats import subjects
from poetctl.backends.nats.transport import NatsTransport
from poetctl.router import EventRouter
from poetctl.transport import Outgoing, State
from tests.contract.kits import _nats_make


def _events(t: NatsTransport, keys: list[str]) -> list[Outgoing]:
    r = EventRouter(transport=t)
    out = []
    for k in keys:
        ev, keyed = r.build("system.health", {"service": "svc", "status": "healthy"}, correlation_id=k)
        out.append(Outgoing(ev, ev.to_json() + b"\n", keyed))
    return out


def _entry(t: NatsTransport, event_id: str) -> object:
    return t.link.run(t._state(event_id))


def _other(t: NatsTransport) -> NatsTransport:
    """A second transport on the same server: what another process sees (no local leases)."""
    return NatsTransport(t.settings)


def test_fresh_event_has_no_entry_and_reads_pending_inflight_processed(tmp_path: Path) -> None:
    """A fresh event is published without a KV entry; pending, inflight, processed are derived, here and elsewhere."""
    t = _nats_make(time.time, tmp_path)  # type: ignore[arg-type]
    other = _other(t)
    try:
        (a,) = _events(t, ["k1"])
        assert not a.keyed and t.publish([a]) == [True]
        assert _entry(t, a.event.id) is None
        assert t.state_of(a.event.id) == State.PENDING and other.state_of(a.event.id) == State.PENDING
        got = other.get(a.event.id)
        assert got is not None and got.event == a.event
        c = t.consumer()
        (d,) = c.fetch(10).deliveries
        assert t.state_of(a.event.id) == State.INFLIGHT and other.state_of(a.event.id) == State.INFLIGHT
        c.ack(d)  # (a begin record that reached the server would be kept current by the ack: not here)
        c.sync()
        assert _entry(t, a.event.id) is None  # acked in stream order: no completion entry either
        assert other.state_of(a.event.id) == State.PROCESSED
        assert other.counts()[State.PROCESSED] == 1 and other.counts()[State.PENDING] == 0
        assert [s.id for s in other.select(_processed())] == [a.event.id]
        c.close()
    finally:
        other.close()
        t.close()


def _processed() -> object:
    from poetctl.transport import Query

    return Query(states=(State.PROCESSED,))


def test_ack_above_an_outstanding_message_writes_an_entry(tmp_path: Path) -> None:
    """An ack that the ack floor cannot cover yet (an earlier message of its partition is still held) writes
    a KV entry, so another process reads it as processed while the earlier one reads inflight."""
    t = _nats_make(time.time, tmp_path)  # type: ignore[arg-type]
    other = _other(t)
    try:
        n = t.settings.partitions
        first = subjects.partition_of("correlation_id=k0", n)  # the default partition key
        key2 = next(f"k{i}" for i in range(1, 1000) if subjects.partition_of(f"correlation_id=k{i}", n) == first)
        a, b = _events(t, ["k0", key2])
        assert subjects.partition_of(t.key_of(b.event), n) == first
        assert t.publish([a, b]) == [True, True]
        c = t.consumer()
        da, db = c.fetch(10).deliveries
        assert (da.id, db.id) == (a.event.id, b.event.id)
        c.begin(db)
        c.ack(db)
        c.sync()
        assert _entry(t, b.event.id) is not None
        assert other.state_of(b.event.id) == State.PROCESSED
        assert other.state_of(a.event.id) == State.INFLIGHT
        c.begin(da)
        c.ack(da)
        c.sync()
        assert other.state_of(a.event.id) == State.PROCESSED
        c.close()
    finally:
        other.close()
        t.close()


def test_keyed_event_keeps_its_entry_current(tmp_path: Path) -> None:
    """A keyed id is published with an entry (so a later publish of it is a no-op); its ack updates that entry."""
    t = _nats_make(time.time, tmp_path)  # type: ignore[arg-type]
    try:
        r = EventRouter(transport=t)
        ev, keyed = r.build("system.health", {"service": "svc", "status": "healthy"}, id="order-7")
        assert keyed and t.publish([Outgoing(ev, ev.to_json() + b"\n", keyed)]) == [True]
        assert _entry(t, "order-7") is not None
        c = t.consumer()
        (d,) = c.fetch(10).deliveries
        c.begin(d)
        c.ack(d)
        c.sync()
        st = _entry(t, "order-7")
        assert isinstance(st, dict) and st["s"] == State.PROCESSED.value
        c.close()
    finally:
        t.close()


def test_on_a_replicated_stream_every_ack_is_behind_a_completion_entry(tmp_path: Path) -> None:
    """R3: an ack in stream order still writes the processed entry first (a quorum confirms it), because a leader
    SIGKILLed before it replicates the ack loses the ack; on R1 (the cases above) no entry is written."""
    from poetctl.backends.nats.settings import NatsSettings
    from tests.natscluster import NatsCluster, create_stream

    with NatsCluster(tmp_path / "nats", size=3) as cluster:
        create_stream(cluster.urls, replicas=3)
        t = NatsTransport(NatsSettings(servers=tuple(cluster.urls), replicas=3))
        try:
            assert t.replicated
            (a,) = _events(t, ["k1"])
            assert t.publish([a]) == [True]
            assert _entry(t, a.event.id) is None  # publishing stays one message
            c = t.consumer()
            (d,) = c.fetch(10).deliveries
            c.ack(d)
            c.sync()
            entry = _entry(t, a.event.id)
            assert isinstance(entry, dict) and entry.get("s") == State.PROCESSED
            c.close()
        finally:
            t.close()
