"""The daemon's behaviours over the transport contract, stepped with a fake clock, on every backend."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from poetctl import Permanent, Retry
from poetctl.daemon.loop import EXIT_OK, EXIT_SOMETHING_DEAD, EXIT_TRY_AGAIN
from poetctl.daemon.middleware import Middleware
from poetctl.daemon.outcomes import Dead, Done, Failed, HandlerTimeout, Outcome
from poetctl.daemon.retries import RetryPolicy
from poetctl.event import Event
from poetctl.testing import FakeClock, Harness
from poetctl.transport import Delivery, State, Transport

from .kits import Kit, MakeHarness


class Died(BaseException):
    """Stands for the death of the daemon's process (raised from a hook, never caught by the loop)."""


def health(h: Harness, key: str = "k1", **kw: Any) -> str:
    return h.router.emit("system.health", {"service": "svc", "status": "healthy"}, correlation_id=key, **kw)


def restart(h: Harness, backend: Kit) -> None:
    """The daemon's process died: a new daemon (new consumer) takes over, recovering at start."""
    backend.crash(h.daemon.consumer)
    h.daemon = h.new_daemon()


# -- the basics -----------------------------------------------------------------------------------


def test_handled_and_unhandled_events_are_processed(make_harness: MakeHarness) -> None:
    """A subscribed event runs its handler and is processed; an event nobody subscribed to is processed too."""
    h = make_harness()
    seen: list[str] = []
    h.router.subscribe("system.health", lambda e: seen.append(e.id), name="h")
    a = health(h)
    b = h.router.emit("system.metrics", {"service": "svc", "metrics": {"x": 1}})
    h.run_until_idle()
    assert seen == [a]
    assert h.state_of(a) == h.state_of(b) == State.PROCESSED


def test_expired_event_is_dead_lettered_unhandled(make_harness: MakeHarness, clock: FakeClock) -> None:
    """An event past its expires_at goes to dead as 'expired' and its handler never runs."""
    h = make_harness()
    seen: list[str] = []
    h.router.subscribe("system.health", lambda e: seen.append(e.id), name="h")
    eid = health(h, expires_at=clock() + 10)
    clock.advance(11)
    h.run_until_idle()
    assert seen == []
    info = h.dead_letter(eid)
    assert info is not None and info["reason"] == "expired" and info["handled"] is False


# -- retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("jitter", [0.0, 1.0], ids=["earliest", "latest"])
def test_retry_schedule_is_within_backoff_bounds(make_harness: MakeHarness, clock: FakeClock, jitter: float) -> None:
    """Retry n comes not before base*2^(n-1)/2 and not after min(cap, base*2^(n-1)) after failure n."""
    policy = RetryPolicy(max_attempts=5, base=1.0, cap=3.0, rand=lambda: jitter)
    h = make_harness(policy=policy)
    calls: list[float] = []

    def fail(e: Event) -> None:
        calls.append(clock())
        raise ConnectionError("down")

    h.router.subscribe("system.health", fail, name="flaky")
    eid = health(h)
    h.run_until_idle()
    for n in range(1, 5):
        assert len(calls) == n
        due = h.daemon.next_due()
        assert due is not None
        ceiling = min(3.0, 2.0 ** (n - 1))
        assert ceiling / 2 <= due - calls[-1] <= ceiling
        clock.set(due - 0.001)
        h.run_until_idle()
        assert len(calls) == n, "retried before its time"
        clock.set(due)
        h.run_until_idle()
    assert len(calls) == 5 and h.state_of(eid) == State.DEAD


def test_dead_letter_after_exactly_max_attempts(make_harness: MakeHarness) -> None:
    """A handler that always fails runs exactly max_attempts times; the dead letter lists every attempt."""
    h = make_harness(max_attempts=4)
    calls: list[str] = []

    def fail(e: Event) -> None:
        calls.append(e.id)
        raise ValueError(f"bad {len(calls)}")

    h.router.subscribe("system.health", fail, name="always")
    eid = health(h)
    h.drain()
    assert len(calls) == 4
    info = h.dead_letter(eid)
    assert info is not None and info["reason"] == "attempts_exhausted" and info["attempts"] == 4
    assert [a["attempt"] for a in info["history"]] == [1, 2, 3, 4]
    assert info["error"] == "ValueError: bad 4" and info["handler"] == "always"


def test_permanent_dead_letters_at_once(make_harness: MakeHarness) -> None:
    """poetctl.Permanent from a handler dead-letters the event on the first attempt, without retries."""
    h = make_harness(max_attempts=5)
    calls: list[str] = []

    def reject(e: Event) -> None:
        calls.append(e.id)
        raise Permanent("HTTP 404 from the endpoint")

    h.router.subscribe("system.health", reject, name="webhook")
    eid = health(h)
    h.drain()
    assert calls == [eid]
    info = h.dead_letter(eid)
    assert info is not None and info["reason"] == "permanent" and "HTTP 404" in info["error"]


def test_retry_after_sets_the_next_attempt(make_harness: MakeHarness, clock: FakeClock) -> None:
    """poetctl.Retry(after=s) makes the next attempt come exactly s seconds later, not on the backoff schedule."""
    h = make_harness(backoff_base=1.0, backoff_cap=1.0)
    calls: list[float] = []

    def busy(e: Event) -> None:
        calls.append(clock())
        if len(calls) == 1:
            raise Retry("429 Too Many Requests", after=30.0)

    h.router.subscribe("system.health", busy, name="rate-limited")
    eid = health(h)
    h.run_until_idle()
    clock.advance(29.999)
    h.run_until_idle()
    assert len(calls) == 1
    clock.advance(0.001)
    h.run_until_idle()
    assert calls == [calls[0], calls[0] + 30.0]
    assert h.state_of(eid) == State.PROCESSED


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()], ids=type)
def test_base_exception_from_a_handler_is_a_failure(make_harness: MakeHarness, exc: BaseException) -> None:
    """SystemExit, KeyboardInterrupt and other BaseExceptions raised by a handler are failures, retried."""
    h = make_harness()
    calls: list[str] = []

    def die(e: Event) -> None:
        calls.append(e.id)
        if len(calls) == 1:
            raise exc

    h.router.subscribe("system.health", die, name="exits")
    eid = health(h)
    h.drain()
    assert len(calls) == 2 and h.state_of(eid) == State.PROCESSED


# -- ordering -------------------------------------------------------------------------------------


def test_per_key_order_holds_through_retries(make_harness: MakeHarness) -> None:
    """A retrying event holds back the later events of its key; they run after it, in order."""
    h = make_harness()
    order: list[str] = []
    failed_once: set[str] = set()

    def handler(e: Event) -> None:
        order.append(e.id)
        if e.id == first and e.id not in failed_once:
            failed_once.add(e.id)
            raise RuntimeError("once")

    h.router.subscribe("system.health", handler, name="h")
    first, second, third = health(h, "a"), health(h, "a"), health(h, "a")
    h.run_until_idle()
    assert order == [first]
    assert h.state_of(second) != State.PROCESSED
    h.drain()
    assert order == [first, first, second, third]


def test_other_keys_are_not_blocked_by_a_retrying_key(make_harness: MakeHarness) -> None:
    """While one key waits for its retry, events of other keys are handled."""
    h = make_harness()
    h.router.subscribe("system.health", lambda e: _fail_if(e, "stuck"), name="h")
    stuck = health(h, "stuck")
    others = [health(h, f"other-{i}") for i in range(5)]
    h.run_until_idle()
    assert h.state_of(stuck) == State.INFLIGHT
    assert {h.state_of(i) for i in others} == {State.PROCESSED}


def _fail_if(e: Event, key: str) -> None:
    if e.correlation_id == key:
        raise RuntimeError("down")


# -- follow-ups -----------------------------------------------------------------------------------


def test_follow_ups_of_a_failed_attempt_are_dropped_and_published_once(make_harness: MakeHarness) -> None:
    """Follow-ups are published only when the handler succeeds: exactly once across a failed attempt."""
    h = make_harness()
    calls: list[str] = []

    def handler(e: Event) -> None:
        calls.append(e.id)
        h.router.emit("system.metrics", {"service": "svc", "metrics": {"n": len(calls)}})
        if len(calls) == 1:
            raise RuntimeError("after emitting")

    h.router.subscribe("system.health", handler, name="h")
    cause = health(h)
    h.run_until_idle()
    assert h.events(types=["system.metrics"]) == []
    h.drain()
    (follow,) = h.events(types=["system.metrics"])
    assert follow.event is not None and follow.event.causation_id == cause


def test_follow_ups_are_published_once_across_a_redelivery_after_a_crash(
    make_harness: MakeHarness, backend: Kit
) -> None:
    """A handler re-run after a crash emits its follow-up again under the same derived id: one event."""
    crash_once: list[bool] = []

    class CrashAfterHandler(Middleware):
        def after_handle(self, event: Event, handler: Any, seconds: float, error: BaseException | None) -> None:
            if not crash_once:
                crash_once.append(True)
                raise Died  # the follow-up is published, the ack never happens

    h = make_harness(middleware=[CrashAfterHandler()])
    calls: list[str] = []

    def handler(e: Event) -> None:
        calls.append(e.id)
        h.router.emit("system.metrics", {"service": "svc", "metrics": {"n": 1}})

    h.router.subscribe("system.health", handler, name="h")
    cause = health(h)
    with pytest.raises(Died):
        h.run_until_idle()
    assert len(h.events(types=["system.metrics"])) == 1
    restart(h, backend)
    h.drain()
    assert calls == [cause, cause]
    assert h.state_of(cause) == State.PROCESSED
    assert len(h.events(types=["system.metrics"])) == 1


def test_a_finished_handler_is_skipped_on_redelivery(make_harness: MakeHarness, backend: Kit) -> None:
    """Effectively-once: after a crash in the second handler, the first does not run again."""

    class CrashInSecond(Middleware):
        def before_handle(self, event: Event, handler: Any) -> None:
            if handler.name == "second" and not runs["second"]:
                runs["second"] += 1
                raise Died

    runs = {"first": 0, "second": 0}
    h = make_harness(middleware=[CrashInSecond()])
    h.router.subscribe("system.health", lambda e: runs.__setitem__("first", runs["first"] + 1), name="first")
    h.router.subscribe("system.health", lambda e: None, name="second")
    eid = health(h)
    with pytest.raises(Died):
        h.run_until_idle()
    restart(h, backend)
    h.drain()
    assert runs["first"] == 1 and h.state_of(eid) == State.PROCESSED


# -- crashes and shutdown ---------------------------------------------------------------------


def test_a_delivery_whose_process_died_counts_as_an_attempt(make_harness: MakeHarness, backend: Kit) -> None:
    """A process that dies in a handler uses an attempt; after max_attempts deaths the event is dead ('died')."""
    deaths: list[str] = []

    class DieInHandler(Middleware):
        def before_handle(self, event: Event, handler: Any) -> None:
            deaths.append(event.id)
            raise Died

    h = make_harness(max_attempts=3, middleware=[DieInHandler()])
    h.router.subscribe("system.health", lambda e: None, name="killer")
    eid = health(h)
    for _ in range(3):
        with pytest.raises(Died):
            h.run_until_idle()
        restart(h, backend)
    h.drain()
    assert len(deaths) == 3
    info = h.dead_letter(eid)
    assert info is not None and info["reason"] == "daemon_died" and "died while handling it" in info["error"]
    assert info["attempts"] == 3  # one attempt per death


def test_leased_but_unstarted_events_of_a_dead_process_are_not_charged(make_harness: MakeHarness, backend: Kit) -> None:
    """Only the delivery that was running when the process died counts a death; its batch-mates do not."""
    died: list[str] = []

    class DieOnFirst(Middleware):
        def before_handle(self, event: Event, handler: Any) -> None:
            if not died:
                died.append(event.id)
                raise Died

    h = make_harness(max_attempts=1, middleware=[DieOnFirst()])
    h.router.subscribe("system.health", lambda e: None, name="h")
    ids = [health(h, k) for k in ("a", "b", "c")]
    with pytest.raises(Died):
        h.run_until_idle()
    restart(h, backend)
    h.drain()
    assert h.daemon.stats.recovered == 3
    assert h.state_of(died[0]) == State.DEAD
    assert {h.state_of(i) for i in ids if i != died[0]} == {State.PROCESSED}


def test_one_death_then_success_is_processed(make_harness: MakeHarness, backend: Kit) -> None:
    """A death below max_attempts only costs an attempt: the next daemon handles the event."""
    died: list[str] = []

    class DieOnce(Middleware):
        def before_handle(self, event: Event, handler: Any) -> None:
            if not died:
                died.append(event.id)
                raise Died

    h = make_harness(max_attempts=2, middleware=[DieOnce()])
    h.router.subscribe("system.health", lambda e: None, name="h")
    eid = health(h)
    with pytest.raises(Died):
        h.run_until_idle()
    restart(h, backend)
    h.drain()
    assert h.state_of(eid) == State.PROCESSED


def test_shutdown_hands_back_and_keeps_the_record(make_harness: MakeHarness, clock: FakeClock) -> None:
    """Stopping hands retrying and queued events back; the next daemon skips finished handlers and keeps counting."""
    h = make_harness(max_attempts=2)
    runs = {"first": 0, "second": 0}

    def second(e: Event) -> None:
        runs["second"] += 1
        raise RuntimeError("down")

    h.router.subscribe("system.health", lambda e: runs.__setitem__("first", runs["first"] + 1), name="first")
    h.router.subscribe("system.health", second, name="second")
    eid, behind = health(h, "a"), health(h, "a")
    h.run_until_idle()
    h.close()
    assert h.state_of(eid) == h.state_of(behind) == State.PENDING
    assert h.daemon.stats.handed_back == 2
    h.daemon = h.new_daemon()
    h.run_until_idle()
    assert runs == {"first": 1, "second": 1}  # not before its retry time
    clock.advance(60)
    h.drain()
    assert runs["first"] == 2  # `behind`'s first handler; eid's was not re-run
    info = h.dead_letter(eid)
    assert info is not None and info["attempts"] == 2 and info["handlers_done"] == ["first"]


def test_recovery_of_a_dead_consumers_work(make_harness: MakeHarness, backend: Kit) -> None:
    """Events leased by a daemon that died are handled by the next one, in key order."""
    h = make_harness(fetch_limit=10)
    order: list[str] = []

    class DieAtStart(Middleware):
        def before_handle(self, event: Event, handler: Any) -> None:
            if not order:
                order.append("died")
                raise Died

    h2 = make_harness(fetch_limit=10, middleware=[DieAtStart()])
    h2.router.subscribe("system.health", lambda e: order.append(e.id), name="h")
    ids = [health(h2, "a") for _ in range(3)]
    with pytest.raises(Died):
        h2.run_until_idle()
    assert {h.state_of(i) for i in ids} == {State.INFLIGHT}
    backend.crash(h2.daemon.consumer)
    h.router.subscribe("system.health", lambda e: order.append(e.id), name="h")
    h.drain()
    assert order == ["died", *ids]


def test_work_taken_over_while_running_is_counted_as_recovered(
    make_harness: MakeHarness, backend: Kit, clock: FakeClock
) -> None:
    """Stats.recovered and on_recover count a dead daemon's events a running daemon takes over, not only at start."""
    reported: list[int] = []
    seen: list[str] = []

    class Reported(Middleware):
        def on_recover(self, count: int) -> None:
            reported.append(count)

    class DieAtStart(Middleware):
        def before_handle(self, event: Event, handler: Any) -> None:
            if not seen:
                seen.append("died")
                raise Died

    h = make_harness(fetch_limit=10, middleware=[Reported()])
    h.router.subscribe("system.health", lambda e: seen.append(e.id), name="h")
    h.run_until_idle()  # running: its start-up recovery found nothing
    assert h.daemon.stats.recovered == 0 and sum(reported) == 0
    h2 = make_harness(fetch_limit=10, middleware=[DieAtStart()])
    h2.router.subscribe("system.health", lambda e: seen.append(e.id), name="h")
    ids = [health(h2, "a") for _ in range(3)]
    with pytest.raises(Died):
        h2.run_until_idle()
    backend.crash(h2.daemon.consumer)
    clock.advance(backend.takeover_after)
    h.drain()
    assert seen == ["died", *ids]
    assert h.daemon.stats.recovered == 3 and sum(reported) == 3


# -- time limits --------------------------------------------------------------------------------


def test_handler_timeout_fails_it_and_frees_the_worker(
    make_harness: MakeHarness, clock: FakeClock, backend: Kit
) -> None:
    """A handler past its timeout fails (HandlerTimeout) while other keys go on; its follow-ups are dropped."""
    h = make_harness(timeouts={"slow": 5.0})
    gate, finished = threading.Event(), threading.Event()
    fast: list[str] = []

    def slow(e: Event) -> None:
        if e.correlation_id == "slow-key":
            clock.advance(10)  # the call takes "10 s" of the daemon's clock
            gate.wait(60)
            h.router.emit("system.metrics", {"service": "svc", "metrics": {"late": 1}})
            finished.set()
        else:
            fast.append(e.id)

    h.router.subscribe("system.health", slow, name="slow")
    stuck = health(h, "slow-key")
    other = health(h, "other")
    h.run_until_idle()
    assert fast == [other] and h.state_of(other) == State.PROCESSED
    assert h.state_of(stuck) == State.INFLIGHT  # failed, waiting for its retry
    gate.set()
    assert finished.wait(60)
    h.daemon.workers[0].runner.close()
    assert h.events(types=["system.metrics"]) == []
    assert h.daemon.stats.timeouts == 1


def test_handler_within_its_timeout_succeeds_with_follow_ups(make_harness: MakeHarness) -> None:
    """A timed handler that returns in time counts as a success, and its follow-ups carry the cause."""
    h = make_harness(timeouts={"timed": 5.0})
    h.router.subscribe(
        "system.health",
        lambda e: h.router.emit("system.metrics", {"service": "svc", "metrics": {"x": 1}}),
        name="timed",
    )
    cause = health(h)
    h.run_until_idle()
    assert h.state_of(cause) == State.PROCESSED
    (follow,) = h.events(types=["system.metrics"])
    assert follow.event is not None and follow.event.causation_id == cause


def test_timed_out_attempts_dead_letter_with_the_stuck_stack(make_harness: MakeHarness, clock: FakeClock) -> None:
    """Every attempt that times out counts; the dead letter says it timed out and where the handler was."""
    h = make_harness(max_attempts=2, timeouts={"hang": 1.0})
    release = threading.Event()

    def hang(e: Event) -> None:
        clock.advance(2)
        release.wait(60)

    h.router.subscribe("system.health", hang, name="hang")
    eid = health(h)
    h.drain()
    release.set()
    info = h.dead_letter(eid)
    assert info is not None and info["attempts"] == 2
    assert info["error"].startswith("HandlerTimeout: handler 'hang' ran longer than its timeout of 1 s")
    assert "in hang" in info["traceback"]


# -- hooks ----------------------------------------------------------------------------------------


def test_middleware_hooks_get_the_right_arguments(make_harness: MakeHarness, clock: FakeClock) -> None:
    """before_handle, after_handle (with the clock's seconds and the error) and on_outcome see each step."""
    log: list[tuple[Any, ...]] = []

    class Recorder(Middleware):
        def before_handle(self, event: Event, handler: Any) -> None:
            log.append(("before", event.id, handler.name))

        def after_handle(self, event: Event, handler: Any, seconds: float, error: BaseException | None) -> None:
            log.append(("after", event.id, handler.name, seconds, type(error).__name__ if error else None))

        def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
            log.append(("outcome", delivery.id, type(outcome).__name__))

    h = make_harness(middleware=[Recorder()])
    calls: list[str] = []

    def handler(e: Event) -> None:
        calls.append(e.id)
        clock.advance(2.5)
        if len(calls) == 1:
            raise ValueError("first")
        if len(calls) == 3:
            raise Permanent("stop")

    h.router.subscribe("system.health", handler, name="h")
    a, b = health(h, "a"), health(h, "b")
    h.drain()
    assert log == [
        ("before", a, "h"),
        ("after", a, "h", 2.5, "ValueError"),
        ("outcome", a, "Failed"),
        ("before", b, "h"),
        ("after", b, "h", 2.5, None),
        ("outcome", b, "Done"),
        ("before", a, "h"),
        ("after", a, "h", 2.5, "Permanent"),
        ("outcome", a, "Dead"),
    ]


def test_outcome_objects_carry_what_was_applied(make_harness: MakeHarness) -> None:
    """on_outcome gets Failed with the attempt and retry time, then Dead with the dead letter description."""
    seen: list[Outcome] = []

    class Keep(Middleware):
        def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
            seen.append(outcome)

    h = make_harness(max_attempts=2, middleware=[Keep()])

    def fail(e: Event) -> None:
        raise OSError("disk")

    h.router.subscribe("system.health", fail, name="h")
    eid = health(h)
    h.drain()
    failed, dead = seen
    assert isinstance(failed, Failed) and failed.attempt.attempt == 1 and failed.attempt.error == "OSError: disk"
    assert failed.retry_at > failed.attempt.at
    assert isinstance(dead, Dead) and dead.reason == "attempts_exhausted" and dead.info["id"] == eid
    assert not isinstance(dead, Done) and not isinstance(failed, HandlerTimeout)


# -- run(once) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [("ok", EXIT_OK), ("permanent", EXIT_SOMETHING_DEAD), ("retry", EXIT_TRY_AGAIN)],
)
def test_run_once_exit_codes(make_harness: MakeHarness, behaviour: str, code: int) -> None:
    """run(once=True) exits 0 when all is processed, 1 after a dead letter, 75 with a retry still waiting."""
    h = make_harness()

    def handler(e: Event) -> None:
        if behaviour == "permanent":
            raise Permanent("no")
        if behaviour == "retry":
            raise RuntimeError("later")

    h.router.subscribe("system.health", handler, name="h")
    eid = health(h)
    assert h.daemon.run(once=True) == code
    expected = {"ok": State.PROCESSED, "permanent": State.DEAD, "retry": State.PENDING}[behaviour]
    assert h.state_of(eid) == expected


def test_not_finished_while_a_follow_up_waits(make_harness: MakeHarness) -> None:
    """finished() stays False after handling published a follow-up, until a fetch finds nothing new."""
    h = make_harness()
    h.router.subscribe(
        "system.health", lambda e: h.router.emit("system.metrics", {"service": "s", "metrics": {"x": 1}}), name="h"
    )
    health(h)
    assert h.daemon.step() > 0
    assert not h.daemon.finished()
    h.run_until_idle()
    assert h.daemon.finished()
    (follow,) = h.events(types=["system.metrics"])
    assert follow.state == State.PROCESSED


def test_threaded_workers_keep_per_key_order(backend: Kit, clock: FakeClock, tmp_path: Any) -> None:
    """With several worker threads every key's events are still handled one at a time, in order."""
    transport = backend.make(clock, tmp_path)
    h = Harness(clock=clock, transport=transport)
    try:
        _threaded_workers_keep_per_key_order(h, transport, clock)
    finally:
        h.close()  # its consumer: one left running would join later tests' NATS membership (kits._stop_earlier)
        transport.close()


def _threaded_workers_keep_per_key_order(h: Harness, transport: Transport, clock: FakeClock) -> None:
    seen: dict[str, list[str]] = {}
    lock = threading.Lock()
    done = threading.Event()
    total = 120

    def handler(e: Event) -> None:
        with lock:
            seen.setdefault(e.correlation_id or "", []).append(e.id)
            if sum(map(len, seen.values())) == total:
                done.set()

    h.router.subscribe("system.health", handler, name="h")
    emitted: dict[str, list[str]] = {}
    for i in range(total):
        key = f"k{i % 7}"
        emitted.setdefault(key, []).append(health(h, key))
    from poetctl.daemon.loop import Loop

    loop = Loop(transport.consumer(), h.router.subscriptions, h.router, workers=3, clock=clock, fetch_limit=16)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    assert done.wait(60)
    loop.request_stop()
    runner.join(60)
    assert seen == emitted
    assert loop.stats.processed == total
