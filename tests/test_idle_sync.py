"""Syncs run beside the deliveries, not in front of them (daemon/handling.py IdleSyncer, fs journal sync)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from poetctl.backends.memory import MemoryTransport
from poetctl.daemon.loop import Loop
from poetctl.errors import SpoolIOError
from poetctl.router import EventRouter

WAIT = 30.0  # generous: each wait ends as soon as its event is seen


class _Started:
    """Handler starts by payload number, each observable as an Event."""

    def __init__(self) -> None:
        self.events: dict[int, threading.Event] = {}
        self.lock = threading.Lock()

    def get(self, n: int) -> threading.Event:
        with self.lock:
            return self.events.setdefault(n, threading.Event())

    def handler(self, event: Any) -> None:
        self.get(event.payload["metrics"]["n"]).set()


def _emit(router: EventRouter, n: int) -> None:
    # One type, no correlation id: every event has the same key, so one worker runs them all in order.
    router.emit("system.metrics", {"service": "s", "metrics": {"n": n}})


def _run(loop: Loop, errors: list[BaseException]) -> threading.Thread:
    def body() -> None:
        try:
            loop.run()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def test_next_delivery_of_a_key_starts_while_the_idle_sync_runs() -> None:
    """With worker threads, a slow sync after a worker went idle does not delay the next event of its key."""
    t = MemoryTransport()
    router = EventRouter(transport=t)
    started = _Started()
    router.subscribe("system.metrics", started.handler, name="probe")
    consumer = t.consumer()
    entered, release = threading.Event(), threading.Event()
    plain_sync = consumer.sync

    def slow_sync() -> None:
        entered.set()
        release.wait()  # a disk taking its time over the fsync
        plain_sync()

    consumer.sync = slow_sync  # type: ignore[method-assign]
    loop = Loop(consumer, router.subscriptions, router, workers=2)
    errors: list[BaseException] = []
    _emit(router, 1)
    runner = _run(loop, errors)
    try:
        assert started.get(1).wait(WAIT)
        assert entered.wait(WAIT)  # the worker went idle with an outcome to make durable
        _emit(router, 2)
        assert started.get(2).wait(WAIT), "the second event waited for the first one's sync"
        assert not release.is_set()
    finally:
        release.set()
        loop.request_stop()
        runner.join(WAIT)
    assert not runner.is_alive() and errors == []


def test_failing_idle_sync_stops_the_daemon_with_its_error() -> None:
    """A sync that fails on the sync thread stops the loop and run() raises it, as a worker's failure does."""
    t = MemoryTransport()
    router = EventRouter(transport=t)
    started = _Started()
    router.subscribe("system.metrics", started.handler, name="probe")
    consumer = t.consumer()

    def failing_sync() -> None:
        raise SpoolIOError("fsync of processed failed: Input/output error")

    consumer.sync = failing_sync  # type: ignore[method-assign]
    loop = Loop(consumer, router.subscriptions, router, workers=2)
    errors: list[BaseException] = []
    _emit(router, 1)
    runner = _run(loop, errors)
    runner.join(WAIT)
    assert not runner.is_alive()
    assert started.get(1).is_set()
    assert len(errors) == 1 and isinstance(errors[0], SpoolIOError)


def test_inline_loop_syncs_on_its_own_thread() -> None:
    """With one worker (inline: tests, --once stepping) the sync stays on the caller's thread, before step returns."""
    t = MemoryTransport()
    router = EventRouter(transport=t)
    router.subscribe("system.metrics", lambda e: None, name="noop")
    consumer = t.consumer()
    threads: list[str] = []
    plain_sync = consumer.sync

    def recording_sync() -> None:
        threads.append(threading.current_thread().name)
        plain_sync()

    consumer.sync = recording_sync  # type: ignore[method-assign]
    loop = Loop(consumer, router.subscriptions, router, workers=1)
    _emit(router, 1)
    try:
        assert loop.step() >= 1
        assert threads == [threading.current_thread().name]
    finally:
        loop.close()


@pytest.mark.parametrize("workers", [2, 4])
def test_threaded_loop_run_once_handles_everything(workers: int) -> None:
    """run(once=True) with worker threads still handles every event and ends (the sync thread does not hang it)."""
    t = MemoryTransport()
    router = EventRouter(transport=t)
    seen: list[int] = []
    lock = threading.Lock()

    def record(e: Any) -> None:
        with lock:
            seen.append(e.payload["metrics"]["n"])

    router.subscribe("system.metrics", record, name="rec")
    for i in range(200):
        router.emit("system.metrics", {"service": "s", "metrics": {"n": i}}, correlation_id=f"c{i % 7}")
    loop = Loop(t.consumer(), router.subscriptions, router, workers=workers)
    assert loop.run(once=True) == 0
    assert sorted(seen) == list(range(200))


def test_journal_sync_does_not_hold_up_new_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the journal's fsync runs, other workers still write their lines (a delivery's start is not delayed)."""
    from poetctl.backends.fs import journal as journal_mod

    j = journal_mod.Journal(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        release.wait()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    j.done("0190a5b4-0000-7000-8000-000000000001", "probe")
    syncer = threading.Thread(target=j.sync, daemon=True)
    syncer.start()
    wrote = threading.Event()

    def write_more() -> None:
        j.began("0190a5b4-0000-7000-8000-000000000002", 1)
        j.done("0190a5b4-0000-7000-8000-000000000002", "probe")
        wrote.set()

    try:
        assert entered.wait(WAIT)
        threading.Thread(target=write_more, daemon=True).start()
        assert wrote.wait(WAIT), "a journal line waited for the fsync"
    finally:
        release.set()
        syncer.join(WAIT)
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    j.sync()  # the line written during the first fsync is dirty: this sync covers it
    assert len(calls) == 1


def test_journal_sync_failure_keeps_the_lines_dirty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed journal fsync raises SpoolIOError, and the next sync tries again rather than trusting it."""
    from poetctl.backends.fs import journal as journal_mod

    j = journal_mod.Journal(tmp_path)
    j.done("0190a5b4-0000-7000-8000-000000000001", "probe")
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(SpoolIOError):
        j.sync()
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    j.sync()
    assert len(calls) == 2
