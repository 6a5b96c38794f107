"""The transport contract, method by method, on every backend (see conftest.KITS)."""

from __future__ import annotations

import threading

import pytest
from daemon_helpers.spool import uuid7_at

from poetctl.router import EventRouter
from poetctl.testing import FakeClock
from poetctl.transport import Attempt, Consumer, Outgoing, Quarantined, Query, State, Transport

from .kits import Emit, Kit


def ids(c: Consumer, limit: int = 100) -> list[str]:
    return [d.id for d in c.fetch(limit).deliveries]


# -- publish ------------------------------------------------------------------------------------


def test_publish_is_visible_as_pending(transport: Transport, make_event: Emit) -> None:
    """A published event is pending and can be read back unchanged."""
    a = make_event()
    assert transport.publish([a]) == [True]
    assert transport.state_of(a.event.id) == State.PENDING
    got = transport.get(a.event.id)
    assert got is not None and got.event == a.event


def test_keyed_id_that_exists_is_a_no_op(transport: Transport, make_event: Emit) -> None:
    """Publishing a keyed id again returns False and keeps the first event."""
    first = make_event(id="order-1", status="healthy")
    again = make_event(id="order-1", status="degraded")
    assert transport.publish([first]) == [True]
    assert transport.publish([again]) == [False]
    got = transport.get("order-1")
    assert got is not None and got.event is not None and got.event.payload["status"] == "healthy"


@pytest.mark.parametrize("outcome", ["ack", "dead"])
def test_id_is_deduplicated_in_every_state(transport: Transport, make_event: Emit, outcome: str) -> None:
    """An id that was handled (processed or dead) is still a no-op when published again."""
    a = make_event(id="once")
    transport.publish([a])
    c = transport.consumer()
    (d,) = c.fetch(10).deliveries
    if outcome == "ack":
        c.ack(d)
    else:
        c.dead(d, "attempts_exhausted", {"id": d.id, "reason": "attempts_exhausted"})
    before = transport.state_of("once")
    assert transport.publish([make_event(id="once")]) == [False]
    assert transport.state_of("once") == before
    assert ids(c) == []


def test_same_id_twice_in_one_group_first_wins(transport: Transport, make_event: Emit) -> None:
    """Within one group a repeated id is added once: the first item wins."""
    a, b = make_event(id="dup", status="healthy"), make_event(id="dup", status="unhealthy")
    assert transport.publish([a, b]) == [True, False]
    got = transport.get("dup")
    assert got is not None and got.event is not None and got.event.payload["status"] == "healthy"


def test_quarantined_id_is_refused_and_nothing_of_the_group_is_written(
    backend: Kit, transport: Transport, make_event: Emit
) -> None:
    """Publishing an id that sits in quarantine raises Quarantined; the rest of the group is not written."""
    bad = make_event(id="bad-1")
    backend.plant_unreadable(transport, "bad-1", b"{not json")
    assert transport.consumer().fetch(10).quarantined == 1
    other = make_event(id="innocent")
    with pytest.raises(Quarantined, match="bad-1"):
        transport.publish([other, bad])
    assert transport.state_of("innocent") is None
    assert transport.state_of("bad-1") == State.CORRUPT


# -- fetch --------------------------------------------------------------------------------------


def test_fetch_hands_out_each_key_in_publish_order(transport: Transport, make_event: Emit) -> None:
    """A key's events come out in the order they were published, interleaved keys or not."""
    items = [make_event(k) for k in ("a", "b", "a", "c", "a", "b")]
    transport.publish(items)
    got = transport.consumer().fetch(100).deliveries
    assert sorted(d.id for d in got) == sorted(i.event.id for i in items)
    for key in ("a", "b", "c"):
        assert [d.id for d in got if d.key.endswith(key)] == [
            i.event.id for i in items if i.event.correlation_id == key
        ]


def test_fetch_is_batched_and_says_when_there_is_more(transport: Transport, make_event: Emit) -> None:
    """fetch(limit) leases at most limit events in one call and reports that more are due."""
    transport.publish([make_event(f"k{i}") for i in range(10)])
    c = transport.consumer()
    first = c.fetch(4)
    assert len(first.deliveries) == 4 and first.more
    rest = c.fetch(100)
    assert len(rest.deliveries) == 6 and not rest.more
    assert not {d.id for d in first.deliveries} & {d.id for d in rest.deliveries}


def test_a_lease_is_not_handed_out_twice(transport: Transport, make_event: Emit) -> None:
    """A leased event is inflight and no consumer gets it again while its holder lives."""
    a = make_event()
    transport.publish([a])
    c1, c2 = transport.consumer(), transport.consumer()
    assert ids(c1) == [a.event.id]
    assert transport.state_of(a.event.id) == State.INFLIGHT
    assert ids(c1) == [] and ids(c2) == []


def test_a_key_held_by_one_consumer_is_not_leased_to_another(transport: Transport, make_event: Emit) -> None:
    """While a consumer holds a key, another consumer gets other keys only; it gets the key once freed."""
    a1, b1 = make_event("a"), make_event("b")
    transport.publish([a1])
    c1, c2 = transport.consumer(), transport.consumer()
    (d,) = c1.fetch(10).deliveries
    a2 = make_event("a")
    transport.publish([a2, b1])
    got = c2.fetch(10)
    assert [x.id for x in got.deliveries] == [b1.event.id]
    assert got.deferred >= 1
    c1.ack(d)
    assert ids(c2) == [a2.event.id]


# -- outcomes -----------------------------------------------------------------------------------


def test_ack_makes_it_processed(transport: Transport, make_event: Emit) -> None:
    """An acked event is processed and never leased again."""
    a = make_event()
    transport.publish([a])
    c = transport.consumer()
    (d,) = c.fetch(1).deliveries
    c.begin(d)
    c.ack(d)
    c.sync()
    assert transport.state_of(a.event.id) == State.PROCESSED
    assert ids(c) == []


def test_fail_keeps_the_lease_and_blocks_the_key(transport: Transport, make_event: Emit, clock: FakeClock) -> None:
    """After fail() the delivery stays leased and no later event of its key is leased, to anyone, until it ends."""
    a1 = make_event("a")
    transport.publish([a1])
    c1, c2 = transport.consumer(), transport.consumer()
    (d,) = c1.fetch(10).deliveries
    c1.begin(d)
    c1.fail(d, Attempt("h", 1, clock(), "boom"), clock() + 5)
    assert d.record.attempts == 1 and d.record.not_before == clock() + 5
    a2, b1 = make_event("a"), make_event("b")
    transport.publish([a2, b1])
    assert transport.state_of(a1.event.id) == State.INFLIGHT
    assert ids(c1) == [b1.event.id]
    assert ids(c2) == []
    c1.ack(d)
    assert ids(c1) == [a2.event.id]


def test_dead_keeps_the_description(transport: Transport, make_event: Emit) -> None:
    """A dead-lettered event is dead, with the description it was given, and its key is free again."""
    a1, a2 = make_event("a"), make_event("a")
    transport.publish([a1])
    c = transport.consumer()
    (d,) = c.fetch(1).deliveries
    info = {"id": d.id, "reason": "permanent", "error": "Permanent: 404"}
    c.dead(d, "permanent", info)
    transport.publish([a2])
    got = transport.get(a1.event.id)
    assert got is not None and got.state == State.DEAD and got.info is not None
    assert got.info["reason"] == "permanent" and got.info["error"] == "Permanent: 404"
    assert ids(c) == [a2.event.id]


def test_quarantine_of_a_leased_event(transport: Transport, make_event: Emit) -> None:
    """quarantine() moves a leased event to corrupt with its reason, and its id is refused afterwards."""
    a = make_event(id="q-1")
    transport.publish([a])
    c = transport.consumer()
    (d,) = c.fetch(1).deliveries
    c.quarantine(d, "bad_schema", "$.payload.status: not allowed")
    got = transport.get("q-1")
    assert got is not None and got.state == State.CORRUPT
    assert got.info is not None and got.info["reason"] == "bad_schema"
    with pytest.raises(Quarantined):
        transport.publish([make_event(id="q-1")])


def test_unreadable_input_is_quarantined_and_blocks_nothing(
    backend: Kit, transport: Transport, make_event: Emit
) -> None:
    """fetch quarantines input it cannot read (counted, never returned) and hands out what follows."""
    backend.plant_unreadable(transport, "aaaa-garbage", b"\x00\xff not an event")
    backend.plant_unreadable(transport, "aaab-mismatch", make_event(id="someone-else").data)
    good = make_event()
    transport.publish([good])
    got = transport.consumer().fetch(10)
    assert [d.id for d in got.deliveries] == [good.event.id]
    assert got.quarantined == 2
    assert transport.state_of("aaaa-garbage") == State.CORRUPT
    assert transport.state_of("aaab-mismatch") == State.CORRUPT


def test_release_hands_back_with_the_record(transport: Transport, make_event: Emit, clock: FakeClock) -> None:
    """Released deliveries are pending again with their record, and not leased before not_before."""
    a = make_event()
    transport.publish([a])
    c1 = transport.consumer()
    (d,) = c1.fetch(1).deliveries
    c1.begin(d)
    c1.done(d, "first")
    c1.fail(d, Attempt("second", 1, clock(), "boom"), clock() + 10)
    c1.release([d])
    assert transport.state_of(a.event.id) == State.PENDING
    c2 = transport.consumer()
    early = c2.fetch(10)
    assert early.deliveries == [] and early.deferred == 1
    clock.advance(10)
    (again,) = c2.fetch(10).deliveries
    assert again.record.done == {"first"}
    assert [f.handler for f in again.record.failures] == ["second"]
    assert again.record.deliveries == 1 and again.record.died() == 0


def test_close_releases_what_is_left(transport: Transport, make_event: Emit) -> None:
    """Closing a consumer hands its remaining leases back."""
    items = [make_event(k) for k in ("a", "b")]
    transport.publish(items)
    c1 = transport.consumer()
    assert len(c1.fetch(10).deliveries) == 2
    c1.close()
    assert {transport.state_of(i.event.id) for i in items} == {State.PENDING}
    assert len(transport.consumer().fetch(10).deliveries) == 2


def test_recover_returns_a_dead_consumers_work_with_its_deliveries(
    backend: Kit, transport: Transport, make_event: Emit
) -> None:
    """A dead consumer's leases wait until recover(); a begun delivery comes back as one death."""
    started, untouched = make_event("a"), make_event("b")
    transport.publish([started, untouched])
    c1 = transport.consumer()
    leased = {d.id: d for d in c1.fetch(10).deliveries}
    c1.begin(leased[started.event.id])
    backend.crash(c1)
    c2 = transport.consumer()
    assert c2.recover() == 2
    assert c2.recover() == 0
    back = {d.id: d for d in c2.fetch(10).deliveries}
    assert set(back) == {started.event.id, untouched.event.id}
    assert back[started.event.id].record.died() == 1
    assert back[untouched.event.id].record.died() == 0


def test_a_live_consumer_takes_over_a_dead_ones_work_by_fetching(
    backend: Kit, transport: Transport, make_event: Emit, clock: FakeClock
) -> None:
    """Without an explicit recover(), fetch returns a dead consumer's leases (and its key's later events) in order."""
    first, later = make_event("a"), make_event("a")
    transport.publish([first])
    c1, c2 = transport.consumer(), transport.consumer()
    assert ids(c1) == [first.event.id]
    transport.publish([later])
    backend.crash(c1)
    clock.advance(backend.takeover_after)
    assert ids(c2) == [first.event.id, later.event.id]


def test_a_takeover_by_fetching_is_reported_as_recovered(
    backend: Kit, transport: Transport, make_event: Emit, clock: FakeClock
) -> None:
    """The fetch that takes a dead consumer's leases over counts them in Fetched.recovered, once."""
    first, second, later = make_event("a"), make_event("a"), make_event("a")
    transport.publish([first, second])
    c1, c2 = transport.consumer(), transport.consumer()
    assert ids(c1) == [first.event.id, second.event.id]
    transport.publish([later])
    backend.crash(c1)
    clock.advance(backend.takeover_after)
    took = c2.fetch(100)
    assert [d.id for d in took.deliveries] == [first.event.id, second.event.id, later.event.id]
    assert took.recovered == 2  # the dead consumer's two leases; `later` was never leased
    assert c2.fetch(100).recovered == 0


def test_wait_wakes_on_publish(transport: Transport, make_event: Emit) -> None:
    """A consumer waiting for work is woken by a publish (long before its timeout)."""
    c = transport.consumer()
    woke = threading.Event()

    def waiter() -> None:
        c.wait(600)
        woke.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    while not woke.is_set():  # publish until the waiter has certainly started waiting
        transport.publish([make_event()])
        woke.wait(0.05)
    t.join(30)
    assert not t.is_alive()


# -- queries ------------------------------------------------------------------------------------


def test_select_by_id_correlation_topic_and_time(transport: Transport, make_event: Emit) -> None:
    """select() finds events by id, correlation id, topic pattern and time, newest first."""
    a, b, c = make_event("inc-1"), make_event("inc-2"), make_event("inc-1")
    transport.publish([a, b, c])
    assert [s.id for s in transport.select(Query(correlation_id="inc-1"))] == [c.event.id, a.event.id]
    assert [s.id for s in transport.select(Query(ids=[b.event.id]))] == [b.event.id]
    assert len(list(transport.select(Query(topics=["poet/system/*"])))) == 3
    assert list(transport.select(Query(topics=["poet/functions/**"]))) == []
    assert [s.id for s in transport.select(Query(since=b.event.timestamp))] == [c.event.id, b.event.id]
    assert [s.id for s in transport.select(Query(), limit=1)] == [c.event.id]


def test_counts_by_state(transport: Transport, make_event: Emit) -> None:
    """counts() gives every state, zeros included."""
    transport.publish([make_event("a"), make_event("b"), make_event("c")])
    c = transport.consumer()
    d1, d2, _ = c.fetch(10).deliveries
    c.ack(d1)
    c.dead(d2, "permanent", {"reason": "permanent"})
    counts = transport.counts()
    assert counts[State.PROCESSED] == 1 and counts[State.DEAD] == 1 and counts[State.INFLIGHT] == 1
    assert counts[State.PENDING] == 0 and counts[State.CORRUPT] == 0


def test_prune_removes_old_processed_events_only(transport: Transport, make_event: Emit) -> None:
    """prune() deletes processed events older than the cut-off; dead ones only when named; never pending."""
    old, dead, pending = make_event("a"), make_event("b"), make_event("c")
    transport.publish([old, dead])
    c = transport.consumer()
    d1, d2 = c.fetch(10).deliveries
    c.ack(d1)
    c.dead(d2, "permanent", {"reason": "permanent"})
    transport.publish([pending])
    cutoff = max(i.event.timestamp for i in (old, dead, pending)) + 1
    assert transport.prune(cutoff) == 1
    assert transport.state_of(old.event.id) is None
    assert transport.state_of(dead.event.id) == State.DEAD
    assert transport.prune(cutoff, (State.DEAD,)) == 1
    assert transport.state_of(pending.event.id) == State.PENDING
    with pytest.raises(ValueError):
        transport.prune(cutoff, (State.PENDING,))


def _metrics(transport: Transport, key: str, source: str = "svc", at: float | None = None) -> Outgoing:
    """A sealed system.metrics event (another type and topic than make_event's) as an Outgoing item.

    ``at``: its time (timestamp and the id's embedded time), for an event that is old from the start.
    """
    router = EventRouter(transport=transport)
    payload = {"service": "svc", "metrics": {"n": 1}}
    ev, keyed = router.build(
        "system.metrics", payload, correlation_id=key, source=source, id=None if at is None else uuid7_at(at)
    )
    if at is not None:
        ev.timestamp = at
        ev.seal()
    return Outgoing(ev, ev.to_json() + b"\n", keyed)


def test_select_by_type_source_until_and_all_criteria_at_once(transport: Transport, make_event: Emit) -> None:
    """Types are globs, source is exact, until is exclusive, and several criteria must all hold."""
    a = make_event("inc-1")
    m = _metrics(transport, "inc-1", source="other")
    b = make_event("inc-2")
    transport.publish([a, m, b])
    assert [s.id for s in transport.select(Query(types=["system.met*"]))] == [m.event.id]
    assert {s.id for s in transport.select(Query(types=["system.*"]))} == {a.event.id, m.event.id, b.event.id}
    assert [s.id for s in transport.select(Query(source="other"))] == [m.event.id]
    assert [s.id for s in transport.select(Query(until=m.event.timestamp))] == [a.event.id]
    both = Query(correlation_id="inc-1", types=["system.health"], topics=["poet/system/*"])
    assert [s.id for s in transport.select(both)] == [a.event.id]
    assert list(transport.select(Query(correlation_id="inc-2", source="other"))) == []


def test_select_by_state_and_get_with_the_dead_letter(transport: Transport, make_event: Emit) -> None:
    """Query.states restricts where select looks; get() returns the event, its state and a dead letter's info."""
    done, dead, waiting = make_event("a"), make_event("b"), make_event("c")
    transport.publish([done, dead])
    c = transport.consumer()
    d1, d2 = c.fetch(10).deliveries
    c.ack(d1)
    c.dead(d2, "permanent", {"reason": "permanent", "attempts": 1})
    transport.publish([waiting])
    assert [s.id for s in transport.select(Query(states=[State.PROCESSED]))] == [done.event.id]
    assert [s.id for s in transport.select(Query(states=[State.DEAD, State.PENDING]))] == [
        waiting.event.id,
        dead.event.id,
    ]
    got = transport.get(dead.event.id)
    assert got is not None and got.state == State.DEAD and got.event is not None
    assert got.event.id == dead.event.id and got.info is not None and got.info["reason"] == "permanent"
    ok = transport.get(done.event.id)
    assert ok is not None and ok.state == State.PROCESSED and ok.info is None
    assert transport.get("01900000-0000-7000-8000-000000000000") is None
    assert transport.state_of("01900000-0000-7000-8000-000000000000") is None


def test_counts_include_quarantined_input(backend: Kit, transport: Transport, make_event: Emit) -> None:
    """Unreadable input quarantined by fetch is counted as corrupt; select never returns it."""
    backend.plant_unreadable(transport, "aaaa-garbage", b"\x00\xff not an event")
    transport.publish([make_event()])
    transport.consumer().fetch(10)
    counts = transport.counts()
    assert counts[State.CORRUPT] == 1 and counts[State.INFLIGHT] == 1
    assert [s.state for s in transport.select(Query())] == [State.INFLIGHT]


def test_prune_keeps_what_is_newer_is_idempotent_and_never_takes_quarantine(
    backend: Kit, transport: Transport, make_event: Emit
) -> None:
    """Only events older than the cut-off go; a second prune removes nothing; corrupt input is refused."""
    new = make_event("b")
    old = _metrics(transport, "a", at=new.event.timestamp - 3600)
    transport.publish([old, new])
    c = transport.consumer()
    for d in c.fetch(10).deliveries:
        c.ack(d)
    cutoff = new.event.timestamp - 1800
    assert transport.prune(cutoff) == 1
    assert transport.prune(cutoff) == 0
    assert transport.state_of(old.event.id) is None and transport.state_of(new.event.id) == State.PROCESSED
    with pytest.raises(ValueError):
        transport.prune(cutoff + 10, (State.CORRUPT,))
    with pytest.raises(ValueError):
        transport.prune(cutoff + 10, (State.INFLIGHT,))
