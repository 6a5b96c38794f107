"""Group commit: concurrent emits in one process share the publish and keep every emit guarantee.

Groups are formed deterministically where a test needs one: the test holds the
spool's emit lock (a real flock), so a leader committing a keyed event blocks
inside its publish while the callers behind it queue up as the next group.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import all_event_files, files_in

from poetctl import EventRouter
from poetctl.backends.fs.writer import GroupCommitter, spool_lock
from poetctl.errors import SpoolIOError
from poetctl.event import verify_checksum

HANG_GUARD_S = 60  # a guard against a hung test, never a timing assertion


def _until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


def _metrics(n: int) -> dict[str, Any]:
    return {"service": "group-commit-test", "metrics": {"n": n}}


def _pending_events(router: EventRouter) -> dict[str, dict[str, Any]]:
    """Every file in events/pending, parsed and checked: {id: envelope}."""
    out: dict[str, dict[str, Any]] = {}
    for f in files_in(router.layout.pending):
        assert f.name.endswith(".json") and not f.name.startswith("."), f
        obj = json.loads(f.read_bytes())
        verify_checksum(obj, where=str(f))
        assert obj["id"] == f.name[: -len(".json")], f
        assert obj["id"] not in out
        out[obj["id"]] = obj
    return out


class _Caller(threading.Thread):
    """Runs ``fn`` once on its own thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc


def _flock_waiters(path: Path) -> int:
    """Blocked flock requests on ``path``, from /proc/locks (``->`` lines)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as fh:
        return sum(1 for line in fh if "->" in line.split() and dev in line.split())


@contextmanager
def _next_group(router: EventRouter, committer: GroupCommitter) -> Iterator[Callable[[Callable[[], Any]], _Caller]]:
    """Hold the publish of a keyed leader; callers added with the yielded function queue up, in order, as one group.

    Leaving the block releases the emit lock and joins every caller.
    """
    callers: list[_Caller] = []
    with spool_lock(router.layout, "emit"):
        leader = _Caller(lambda: router.emit("system.metrics", _metrics(-1), id="gate-leader"))
        leader.start()
        _until(lambda: committer.state() == (1, 0), "the gate leader took its group")
        # Blocked on the emit lock inside its publish, with events/pending already open.
        _until(lambda: _flock_waiters(router.layout.run / "emit.lock") == 1, "the gate leader waits for the lock")

        def add(fn: Callable[[], Any]) -> _Caller:
            c = _Caller(fn)
            callers.append(c)
            c.start()
            _until(lambda: committer.state() == (1, len(callers)), f"caller {len(callers)} queued")
            return c

        yield add
    leader.join(HANG_GUARD_S)
    for c in callers:
        c.join(HANG_GUARD_S)
    assert not leader.is_alive() and not any(c.is_alive() for c in callers)
    assert leader.error is None, leader.error


def test_threads_emitting_concurrently_land_exactly_once(router: EventRouter) -> None:
    """8 threads x 60 emits: every event is in pending once, whole, checksummed, with a unique id."""
    threads, per_thread = 8, 60
    start = threading.Barrier(threads)
    ids: list[list[str]] = [[] for _ in range(threads)]

    def run(k: int) -> list[str]:
        start.wait()
        for i in range(per_thread):
            ids[k].append(router.emit("system.metrics", _metrics(k * 1000 + i)))
        return ids[k]

    callers = [_Caller(lambda k=k: run(k)) for k in range(threads)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(HANG_GUARD_S)
    assert [c.error for c in callers] == [None] * threads
    returned = [i for chunk in ids for i in chunk]
    assert len(returned) == len(set(returned)) == threads * per_thread
    events = _pending_events(router)
    assert set(events) == set(returned)
    assert sorted(e["payload"]["metrics"]["n"] for e in events.values()) == sorted(
        k * 1000 + i for k in range(threads) for i in range(per_thread)
    )
    assert files_in(router.layout.tmp) == []
    assert router.committer.state() == (0, 0)


def test_threads_emitting_one_keyed_id_yield_one_file(router: EventRouter) -> None:
    """16 threads emitting the same caller-chosen ids at once: one file per id, every call returns the id."""
    threads, keys = 16, [f"order-{n}" for n in range(20)]
    start = threading.Barrier(threads)

    def run(k: int) -> list[str]:
        start.wait()
        return [router.emit("system.metrics", _metrics(k), id=key) for key in keys]

    callers = [_Caller(lambda k=k: run(k)) for k in range(threads)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(HANG_GUARD_S)
    assert [c.error for c in callers] == [None] * threads
    assert all(c.result == keys for c in callers)
    assert sorted(_pending_events(router)) == sorted(keys)
    assert files_in(router.layout.tmp) == []


def test_one_group_with_the_same_keyed_id_adds_it_once(router: EventRouter) -> None:
    """Several members of one group carry the same keyed id (and fresh events): the first adds it, the rest no-op."""
    c = router.committer
    with _next_group(router, c) as add:
        keyed = [add(lambda k=k: router.emit("system.metrics", _metrics(k), id="same-key")) for k in range(5)]
        fresh = [add(lambda k=k: router.emit("system.metrics", _metrics(100 + k))) for k in range(3)]
        batch = add(lambda: router.emit_many([("system.metrics", _metrics(200)), {"id": "same-key", **_ev(201)}]))
    assert [k.error for k in (*keyed, *fresh, batch)] == [None] * 9
    events = _pending_events(router)
    assert events["same-key"]["payload"]["metrics"]["n"] == 0  # the first member in the group won
    assert set(events) == {"gate-leader", "same-key", *(f.result for f in fresh), batch.result[0]}
    assert batch.result[1] == "same-key"
    assert files_in(router.layout.tmp) == []


def _ev(n: int) -> dict[str, Any]:
    return {"type": "system.metrics", "payload": _metrics(n)}


def test_failed_publish_reaches_every_member_and_takes_back_the_group(router: EventRouter) -> None:
    """A rename failing mid-group (EISDIR) fails all members; files already renamed are removed again."""
    c = router.committer
    built = [router.build("system.metrics", _metrics(n))[0] for n in range(4)]
    # The last member's name is taken by a directory: the first three are renamed before it fails.
    blocker = router.layout.pending / f"{built[-1].id}.json"
    router.layout.init()
    blocker.mkdir()
    with _next_group(router, c) as add:
        members = [add(lambda ev=ev: c.commit([(ev.id, ev.to_json() + b"\n", False)])) for ev in built]
    errors = [m.error for m in members]
    assert all(isinstance(e, SpoolIOError) for e in errors), errors
    assert all("cannot commit into" in str(e) for e in errors), errors
    assert len({id(e) for e in errors}) == len(errors)  # each thread raised its own exception object
    # Only the gate leader's event and the blocking directory: nothing of the failed group.
    assert sorted(p.name for p in router.layout.pending.iterdir()) == sorted(["gate-leader.json", blocker.name])
    assert [p.name for p in all_event_files(router.layout.root)] == ["gate-leader.json"]
    assert files_in(router.layout.tmp) == []
    assert c.state() == (0, 0)
    # The committer keeps working after a failed group.
    blocker.rmdir()
    assert router.emit("system.metrics", _metrics(9)) in _pending_events(router)


def test_failed_group_reaches_every_emit_caller(router: EventRouter) -> None:
    """events/pending gone when the group flushes: every emit() in it raises SpoolIOError, tmp/ is clean."""
    c = router.committer
    pending = router.layout.pending
    moved = pending.with_name("pending.moved")
    router.layout.init()
    with _next_group(router, c) as add:
        fresh = [add(lambda n=n: router.emit("system.metrics", _metrics(n))) for n in range(3)]
        keyed = add(lambda: router.emit("system.metrics", _metrics(3), id="keyed-in-failed-group"))
        batch = add(lambda: router.emit_many([("system.metrics", _metrics(n)) for n in range(4, 14)]))
        # The gate leader already holds its open pending/; the next group will not find one.
        os.rename(pending, moved)
    members = [*fresh, keyed, batch]
    assert all(isinstance(m.error, SpoolIOError) for m in members), [m.error for m in members]
    assert all(str(pending) in str(m.error) for m in members)
    assert not pending.exists()
    os.rename(moved, pending)
    assert sorted(_pending_events(router)) == ["gate-leader"]
    assert files_in(router.layout.tmp) == []
    assert c.state() == (0, 0)


def test_one_group_of_batches_and_single_emits_lands_whole(router: EventRouter) -> None:
    """A group of 12-event batches (synced with syncfs) and single emits: every event lands once, tmp/ is clean."""
    c = router.committer
    with _next_group(router, c) as add:
        batches = [add(lambda b=b: router.emit_many([_ev(100 * b + n) for n in range(12)])) for b in range(2)]
        singles = [add(lambda n=n: router.emit("system.metrics", _metrics(n))) for n in range(6)]
    assert [m.error for m in (*batches, *singles)] == [None] * 8
    expected = {"gate-leader", *(i for b in batches for i in b.result), *(m.result for m in singles)}
    assert set(_pending_events(router)) == expected
    assert len(expected) == 1 + 24 + 6
    assert files_in(router.layout.tmp) == []


@pytest.mark.parametrize("threads", [1, 4])
def test_keyed_and_fresh_batches_from_threads(router: EventRouter, threads: int) -> None:
    """emit_many batches from several threads, re-sending each other's keyed ids: each id once."""
    start = threading.Barrier(threads)

    def run(k: int) -> list[str]:
        start.wait()
        out: list[str] = []
        for r in range(5):
            items: list[Any] = [("system.metrics", _metrics(k * 100 + r))]
            items += [{"id": f"shared-{r}-{j}", **_ev(j)} for j in range(10)]
            out += router.emit_many(items)
        return out

    callers = [_Caller(lambda k=k: run(k)) for k in range(threads)]
    for cl in callers:
        cl.start()
    for cl in callers:
        cl.join(HANG_GUARD_S)
    assert [cl.error for cl in callers] == [None] * threads
    events = _pending_events(router)
    shared = {f"shared-{r}-{j}" for r in range(5) for j in range(10)}
    assert shared <= set(events)
    assert len(events) == len(shared) + threads * 5
    assert files_in(router.layout.tmp) == []


class _Interrupt(BaseException):
    """Stands in for KeyboardInterrupt (raised by a signal handler in the main thread)."""


def test_an_interrupted_caller_still_sees_its_group_through(router: EventRouter) -> None:
    """A caller interrupted (by a signal) while queued still leads its group, then re-raises; nobody hangs."""
    c = router.committer
    delivered, held, release = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        delivered.set()
        raise _Interrupt()

    def hold_emit_lock() -> None:
        with spool_lock(router.layout, "emit"):
            held.set()
            release.wait(HANG_GUARD_S)

    others: list[_Caller] = []

    def interrupt_then_release() -> None:
        _until(lambda: c.state() == (1, 1), "the main thread queued behind the gate leader")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        delivered.wait(HANG_GUARD_S)
        later = _Caller(lambda: router.emit("system.metrics", _metrics(2)))
        others.append(later)
        later.start()
        _until(lambda: c.state() == (1, 2), "a later caller queued behind the main thread")
        release.set()

    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        holder = threading.Thread(target=hold_emit_lock, daemon=True)
        holder.start()
        assert held.wait(HANG_GUARD_S)
        leader = _Caller(lambda: router.emit("system.metrics", _metrics(0), id="gate-leader"))
        leader.start()
        _until(lambda: _flock_waiters(router.layout.run / "emit.lock") == 1, "the gate leader waits for the lock")
        helper = threading.Thread(target=interrupt_then_release, daemon=True)
        helper.start()
        with pytest.raises(_Interrupt):
            router.emit("system.metrics", _metrics(1))
    finally:
        release.set()
        signal.signal(signal.SIGUSR1, previous)
    for t in (holder, leader, helper, *others):
        t.join(HANG_GUARD_S)
    assert delivered.is_set()
    assert leader.error is None and others[0].error is None
    events = _pending_events(router)
    # The interrupted caller's event was published with its group (like an interrupt just after emit returned).
    assert sorted(e["payload"]["metrics"]["n"] for e in events.values()) == [0, 1, 2]
    assert c.state() == (0, 0)
    assert router.emit("system.metrics", _metrics(3)) in _pending_events(router)
    assert files_in(router.layout.tmp) == []
