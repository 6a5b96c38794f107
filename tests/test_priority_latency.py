"""Priority latency on the spool: a high event hinted while a fetch claims normal ones goes out with it."""

from __future__ import annotations

import fcntl
import os
import zlib
from pathlib import Path
from typing import Any

from poetctl.backends.fs.claims import BUCKETS
from poetctl.backends.fs.consumer import FsConsumer
from poetctl.backends.fs.priority import HINTS
from poetctl.backends.fs.transport import FsTransport
from poetctl.router import EventRouter
from poetctl.transport import Outgoing

NORMAL = 200  # more than one claim group of 32 and less than one fetch


def _item(router: EventRouter, key: str, priority: str | None = None) -> Outgoing:
    ev, keyed = router.build(
        "system.health", {"service": "s", "status": "healthy"}, correlation_id=key, priority=priority
    )
    return Outgoing(ev, ev.to_json(), keyed)


def _backlog(t: FsTransport, r: EventRouter) -> list[str]:
    items = [_item(r, f"n{i}") for i in range(NORMAL)]
    t.publish(items)
    return [it.event.id for it in items]


def _emit_during_claims(c: FsConsumer, after: int, emit: Any) -> list[str]:
    """Make ``emit()`` run when the consumer prepares its ``after``-th pending event; the ids it made."""
    made: list[str] = []
    prepare = c._prepare
    calls = [0]

    def spy(path: str, name: str, claim: bool) -> Any:
        calls[0] += 1
        if calls[0] == after:
            made.append(emit())
        return prepare(path, name, claim)

    c._prepare = spy  # type: ignore[method-assign]
    return made


def test_high_hinted_mid_fetch_goes_out_first_in_that_fetch(spool: Path) -> None:
    """A high event committed while a fetch claims normal ones is its first delivery; normal order is kept."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    normal = _backlog(t, r)
    c = t.consumer(watch=False, index=False, mover_backlog=-1)
    try:

        def emit_high() -> str:
            high = _item(r, "hot", "high")
            t.publish([high])
            return high.event.id

        made = _emit_during_claims(c, 5, emit_high)
        got = [d.id for d in c.fetch(256).deliveries]
        assert made and got[0] == made[0]  # before: it waited for the next fetch
        rest = got[1:]
        assert rest == normal[: len(rest)] and len(rest) < NORMAL  # the claims stopped early for it
        while len(rest) < NORMAL:
            more = [d.id for d in c.fetch(256).deliveries]
            assert more, "normal events were lost"
            rest += more
        assert rest == normal
        assert os.listdir(spool / HINTS) == []
    finally:
        c.close()
        t.close()


def test_high_hinted_mid_fetch_with_the_mover(spool: Path) -> None:
    """The same with claims pipelined through the mover child: the high event leads the fetch it arrived in."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    normal = _backlog(t, r)
    c = t.consumer(watch=False, index=False, mover_backlog=0)
    try:

        def emit_high() -> str:
            high = _item(r, "hot", "high")
            t.publish([high])
            return high.event.id

        made = _emit_during_claims(c, 5, emit_high)
        got = [d.id for d in c.fetch(256).deliveries]
        assert made and got[0] == made[0]
        rest = got[1:]
        while len(rest) < NORMAL:
            more = [d.id for d in c.fetch(256).deliveries]
            assert more, "normal events were lost"
            rest += more
        assert rest == normal
    finally:
        c.close()
        t.close()


def test_unclaimable_hint_does_not_cut_fetches_short(spool: Path) -> None:
    """A hinted event held back (its key bucket is another daemon's) leaves normal fetches whole."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    high = _item(r, "held", "high")
    t.publish([high])
    assert os.listdir(spool / HINTS) == [high.event.id]
    c = t.consumer(watch=False, index=False, mover_backlog=-1)
    bucket = zlib.crc32(b"correlation_id=held") % BUCKETS
    lock = os.open(spool / "run" / "buckets" / f"{bucket:03d}.lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as another daemon holding the bucket would
    try:
        normal = [
            it
            for it in (_item(r, f"n{i}") for i in range(400))
            if zlib.crc32(f"correlation_id={it.event.correlation_id}".encode()) % BUCKETS != bucket
        ]  # type: ignore[union-attr]
        assert c.fetch(256).deliveries == []  # tries the hint: held back, remembered as stuck
        t.publish(normal)
        got = c.fetch(256).deliveries
        assert [d.id for d in got] == [it.event.id for it in normal[:256]]
        assert os.listdir(spool / HINTS) == [high.event.id]  # kept until it can be claimed
    finally:
        os.close(lock)
        c.close()
        t.close()


def test_a_high_event_goes_out_before_any_normal_claim_and_the_share_follows(spool: Path) -> None:
    """A fetch that finds a high event hands it out at once; normal work's share (25%) comes in the next fetch."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    normal = _backlog(t, r)
    c = t.consumer(watch=False, index=False, mover_backlog=-1)
    try:
        primed = [d.id for d in c.fetch(10).deliveries]  # a running daemon has listed pending
        for i in range(3):  # back to back: each fetch after the first pays the share the one before owed
            high = _item(r, f"hot{i}", "high")
            t.publish([high])
            got = c.fetch(100).deliveries
            assert got[0].id == high.event.id
            if i == 0:
                assert len(got) == 1  # before: it waited for normal work's share to be claimed first
            else:
                assert 1 <= len(got) - 1 <= 100 * 25 // 95  # the high one, then the share (not a full batch)
        seen = primed
        while got := c.fetch(100).deliveries:
            seen += [d.id for d in got]
        assert len(set(seen)) == len(seen) and set(seen) <= set(normal)
    finally:
        c.close()
        t.close()


def test_stream_of_high_events_leaves_normal_its_share(spool: Path) -> None:
    """With 400 high events waiting, normal events still go out (shares 70/25/5), windows listed again."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    normal = _backlog(t, r)
    highs = [_item(r, f"hot{i}", "high") for i in range(400)]
    t.publish(highs)
    high_ids = {h.event.id for h in highs}
    c = t.consumer(watch=False, index=False, mover_backlog=-1, window=40)  # listed again every 40 names
    try:
        order: list[str] = []
        without = 0  # fetches in a row that took no normal event
        while len(high_ids - set(order)) > 0:
            got = [d.id for d in c.fetch(100).deliveries]
            assert got, "high events were lost"
            without = 0 if any(i not in high_ids for i in got) else without + 1
            assert without <= 1, "normal work was starved"
            order += got
            more = [_item(r, f"m{len(order)}-{i}") for i in range(5)]
            t.publish(more)  # arrivals: the window must be listed again for them
            normal += [it.event.id for it in more]
        taken = [i for i in order if i not in high_ids]
        assert len(taken) >= 40 and taken == normal[: len(taken)]  # its share, in order
    finally:
        c.close()
        t.close()


def _urgent_job() -> Any:
    from poetctl.daemon.handling import Job

    return Job(None, (), urgent=True)  # type: ignore[arg-type]


def test_gate_holds_others_until_the_urgent_delivery_starts() -> None:
    """UrgentGate: closed for a dispatched high delivery, open once it starts; a holder wakes then."""
    import threading

    from poetctl.daemon.handling import UrgentGate

    g = UrgentGate()
    job = _urgent_job()
    g.close(1)
    assert g.waiting == 1
    woke = threading.Event()

    def holder() -> None:
        g.hold()
        woke.set()

    th = threading.Thread(target=holder)
    th.start()
    g.started(job)
    th.join()
    assert woke.is_set() and g.waiting == 0 and not job.urgent


def test_gate_start_before_close_leaves_it_open() -> None:
    """A high delivery that starts before the loop closes the gate for it leaves the gate open."""
    from poetctl.daemon.handling import UrgentGate

    g = UrgentGate()
    g.started(_urgent_job())  # the worker was quicker than the loop's close()
    g.close(1)
    assert g.waiting == 0
    g.hold()  # returns at once: nothing waits


def test_listing_is_cut_short_for_a_hint_but_never_twice_in_a_row(spool: Path) -> None:
    """A hint during a long listing cuts it short (the high event goes out first); the next listing completes."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    normal = [_item(r, f"n{i}") for i in range(2100)]  # two checks of 1,024 names in a listing
    t.publish(normal)
    c = t.consumer(watch=False, index=False, mover_backlog=-1)
    highs: list[str] = []
    real = c.listing_interrupt

    def emit_high() -> None:
        high = _item(r, f"hot{len(highs)}", "high")
        t.publish([high])
        highs.append(high.event.id)

    def during_listing() -> Any:
        check = real()
        if check is None:  # not to be cut short: the hint is there from its start
            emit_high()
            return None

        def emit_then_check() -> bool:
            if not highs:
                emit_high()
            return check()

        return emit_then_check

    c.listing_interrupt = during_listing  # type: ignore[method-assign]
    try:
        first = [d.id for d in c.fetch(256).deliveries]
        assert first == highs[:1]  # before: 256 normal events, the high one a fetch later
        second = [d.id for d in c.fetch(256).deliveries]
        assert second == highs[1:2]  # hinted as the second listing began: out first all the same
        assert c.pending_seen >= 2000  # the second listing completed despite the hint
        rest: list[str] = []
        while got := c.fetch(256).deliveries:
            rest += [d.id for d in got]
        assert rest == [it.event.id for it in normal]
    finally:
        c.close()
        t.close()


def test_rescan_keeps_a_window_with_names_left(spool: Path) -> None:
    """A rescan that recovered nothing does not list pending/ anew while the window still has names."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    normal = _backlog(t, r)
    c = t.consumer(watch=False, index=False, mover_backlog=-1, rescan_interval=0.0)  # a rescan every fetch
    listings = [0]
    real = c.list_window

    def counted() -> None:
        listings[0] += 1
        real()

    c.list_window = counted  # type: ignore[method-assign]
    try:
        got: list[str] = []
        for _ in range(3):
            got += [d.id for d in c.fetch(10).deliveries]
        assert got == normal[:30]
        assert listings[0] == 1  # before: one listing per fetch
    finally:
        c.close()
        t.close()


def test_a_backlog_larger_than_the_window_is_fetched_through_without_a_wake_up(spool: Path) -> None:
    """200 pending and a window of 40: fetch keeps saying "more" and lists again after each window, with no
    wake-up or rescan needed (before, the consumer went quiet after the first 40 until the next rescan)."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    items = [_item(r, f"k{i}") for i in range(200)]
    t.publish(items)
    c = t.consumer(watch=False, index=False, mover_backlog=-1, window=40, rescan_interval=3600.0)
    try:
        got: list[str] = []
        for _ in range(50):
            f = c.fetch(25)
            for d in f.deliveries:
                c.ack(d)
            got += [d.id for d in f.deliveries]
            if not f.more:
                break
        assert got == [it.event.id for it in items]
    finally:
        c.close()
        t.close()


class _NullConsumer:
    """Just what a KeyWorker calls while it handles (journal lines are not the point here)."""

    def begin(self, delivery: Any) -> None:
        pass

    def done(self, delivery: Any, handler: str) -> None:
        pass

    def sync(self) -> None:
        pass


class _NoCause:
    def set_cause(self, event: Any, handler: str = "", buffer: Any = None) -> None:
        pass

    def commit_events(self, built: Any) -> list[bool]:
        return []


def test_worker_starting_a_high_delivery_before_the_close_leaves_the_gate_open(spool: Path) -> None:
    """A worker that starts its high delivery before the loop closes the gate for it still opens it.

    Before, the worker counted a start only while the gate was closed; one
    quicker than the loop's close() left the gate closed for good, and every
    later high dispatch stalled the loop and the other workers for HOLD_LIMIT.
    """
    w, gate, _, seen, eid = _high_job_on_worker(spool, _NullConsumer(), close=False)
    assert w.step(block=False) == 1 and seen == [eid]  # it ran before the loop's close() below
    gate.close(1)
    assert gate.waiting == 0  # before: 1, closed with no delivery left to open it
    assert gate._open.is_set()


def test_a_high_event_hinted_while_a_share_is_claimed_cuts_it_short(spool: Path) -> None:
    """The share owed by a high fetch is claimed first in the next one; a high event hinted then goes out first."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    normal = _backlog(t, r)
    c = t.consumer(watch=False, index=False, mover_backlog=-1)
    try:
        primed = [d.id for d in c.fetch(10).deliveries]
        first = _item(r, "hot0", "high")
        t.publish([first])
        assert [d.id for d in c.fetch(100).deliveries] == [first.event.id]  # its share is owed
        assert c.share_due > 0

        def emit_high() -> str:
            high = _item(r, "hot1", "high")
            t.publish([high])
            return high.event.id

        made = _emit_during_claims(c, 3, emit_high)  # during the share's claims (the next fetch's start)
        got = [d.id for d in c.fetch(100).deliveries]
        assert made and got[0] == made[0]  # not after the whole share
        assert len(got) - 1 < 100 * 25 // 95 and c.share_due > 0  # cut short: still owed
        seen = primed + got[1:]
        while more := c.fetch(100).deliveries:
            seen += [d.id for d in more]
        assert seen == normal  # nothing lost, nothing twice, in order
    finally:
        c.close()
        t.close()


class _GateWatcher(_NullConsumer):
    """Notes whether the urgent gate was still closed each time a delivery began (the loop cannot fetch then)."""

    def __init__(self, gate: Any, fail: bool = False) -> None:
        self.gate = gate
        self.fail = fail
        self.closed_at_begin: list[bool] = []

    def begin(self, delivery: Any) -> None:
        self.closed_at_begin.append(not self.gate._open.is_set())
        if self.fail:
            raise RuntimeError("the backend refused the begin record")


def _high_job_on_worker(
    spool: Path, consumer: Any = None, fail: bool = False, close: bool = True
) -> tuple[Any, Any, Any, list[str], str]:
    """A key worker with one high delivery put to it (its event's id last), over ``consumer`` (default: a
    :class:`_GateWatcher` whose begin raises if ``fail``); ``close``: the loop's close() after its put (the usual
    order). The handler notes the ids it ran in the returned list."""
    import time

    from poetctl.daemon.handling import Job, KeyWorker, UrgentGate
    from poetctl.daemon.middleware import Hooks
    from poetctl.daemon.retries import RetryPolicy
    from poetctl.transport import Delivery, Record

    ev = _item(EventRouter(spool=spool), "hot", "high").event
    seen: list[str] = []

    class Sub:
        pattern = "*"
        name = "probe"

        @staticmethod
        def fn(event: Any) -> None:
            seen.append(event.id)

    gate = UrgentGate()
    if consumer is None:
        consumer = _GateWatcher(gate, fail)
    w = KeyWorker(0, consumer, _NoCause(), RetryPolicy(), time.time, Hooks([]), lambda d, o: None, gate)
    w.put([Job(Delivery(ev, "hot", Record()), ((Sub(), None),), urgent=True)], urgent=True)
    if close:
        gate.close(1)
    return w, gate, consumer, seen, ev.id


def test_the_gate_stays_closed_until_the_high_delivery_has_begun(spool: Path) -> None:
    """The urgent gate opens after the high delivery's begin, not before: the loop's next fetch cannot take the
    consumer's lock first and make that begin wait for the whole fetch (NATS: the 100+ ms tail)."""
    w, gate, consumer, seen, _ = _high_job_on_worker(spool)
    assert w.step(block=False) == 1 and len(seen) == 1
    assert consumer.closed_at_begin == [True]  # before: [False], opened before begin was called
    assert gate.waiting == 0 and gate._open.is_set()


def test_a_high_delivery_whose_begin_fails_still_opens_the_gate(spool: Path) -> None:
    """A begin that raises still counts the urgent delivery as started: the gate never stays closed for good."""
    import pytest

    w, gate, consumer, seen, _ = _high_job_on_worker(spool, fail=True)
    with pytest.raises(RuntimeError):
        w.step(block=False)
    assert consumer.closed_at_begin == [True] and seen == []
    assert gate.waiting == 0 and gate._open.is_set()
