"""Single emits grouped by the committer: [limits] read per emit, the gauge and the key ledger once per group."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_backpressure import pending, setup
from test_priority import hints

from poetctl.backends.fs.limits import peek
from poetctl.backends.fs.transport import FsTransport
from poetctl.config import load_config
from poetctl.limits import Backpressure
from poetctl.router import EventRouter
from poetctl.transport import Outgoing

HEALTH = {"service": "s", "status": "healthy"}


def test_limits_edited_in_place_after_an_emit_apply_to_the_next(tmp_path: Path) -> None:
    """[limits] changed in place (or replaced) after emits were admitted is honoured by the next emit."""
    config = load_config(setup(tmp_path, "max_pending = 1000"))
    router = EventRouter(config=config)
    router.emit("system.health", HEALTH, wait=0)
    router.emit("system.health", HEALTH, wait=0)  # a cached parse may not outlive the edit below
    config.limits["max_pending"] = 2
    with pytest.raises(Backpressure):
        router.emit("system.health", HEALTH, wait=0)
    config.limits["max_pending"] = 3
    router.emit("system.health", HEALTH, wait=0)
    config.limits = {"sources": {"system.*": "1/h"}, "max_pending": 100}
    router.emit("system.health", HEALTH, wait=0, source="system.a")
    config.limits["sources"]["system.*"] = "1/h"  # unchanged: still limited
    with pytest.raises(Backpressure):
        router.emit("system.health", HEALTH, wait=0, source="system.b")
    config.limits["sources"].clear()  # a nested table edited in place
    router.emit("system.health", HEALTH, wait=0, source="system.c")
    assert len(pending(tmp_path)) == 5


def _grouped(monkeypatch: pytest.MonkeyPatch, t: FsTransport, publishes: list[list[Outgoing]]) -> None:
    """Publish each list on its own thread, all queued behind one blocked leader: they commit as one group, in order."""
    from poetctl.backends.fs import writer

    real = writer._publish
    release = threading.Event()
    calls = []

    def held(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            release.wait()
        real(*args, **kwargs)

    monkeypatch.setattr(writer, "_publish", held)
    r = EventRouter(spool=t.layout.root)
    blocker = threading.Thread(target=t.publish, args=([_item(r, "blocker")],))
    blocker.start()
    while not calls:  # the blocker leads (held in its publish) before anyone else queues
        time.sleep(0.001)
    threads = []
    for i, items in enumerate(publishes):
        th = threading.Thread(target=t.publish, args=(items,))
        th.start()
        threads.append(th)
        while t.committer.state() != (1, i + 1):  # queued, in this order, behind the blocked leader
            time.sleep(0.001)
    release.set()
    for th in [blocker, *threads]:
        th.join()
    assert len(calls) == 2  # the blocker's group, then one group of all the others


def _item(router: EventRouter, key: str, priority: str | None = None) -> Outgoing:
    ev, keyed = router.build("system.health", HEALTH, correlation_id=key, priority=priority)
    return Outgoing(ev, ev.to_json(), keyed)


def test_same_key_normal_then_high_from_two_threads_in_one_group_no_jump(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads' single emits of key K in one group: the high one never jumps the normal one queued before it."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    normal, high, other = _item(r, "k"), _item(r, "k", "high"), _item(r, "free", "high")
    try:
        _grouped(monkeypatch, t, [[normal], [high], [other]])
        assert hints(spool) == [other.event.id]  # a key with nothing unfinished still jumps
        assert {p.stem for p in (spool / "events" / "pending").glob("*.json")} >= {
            normal.event.id,
            high.event.id,
            other.event.id,
        }
    finally:
        t.close()


def test_group_updates_the_gauge_once_with_every_member(spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group of three single emits adds 3 events and their bytes to the pending gauge, in one update."""
    t = FsTransport(spool)
    r = EventRouter(spool=spool)
    items = [[_item(r, f"k{i}")] for i in range(3)]
    updates: list[tuple[int, int]] = []
    real = t.limits_state.added

    def counted(n: int, nbytes: int) -> None:
        updates.append((n, nbytes))
        real(n, nbytes)

    monkeypatch.setattr(t.limits_state, "added", counted)
    try:
        _grouped(monkeypatch, t, items)
        assert updates[1:] == [(3, sum(len(i[0].data) for i in items))], updates  # [0]: the blocker
        view = peek(t.layout)
        assert view is not None and view.pending == 4
    finally:
        t.close()


def test_ledger_way_search_matches_only_at_a_key_hash() -> None:
    """A key hash found inside another way's ids is not that key's way; the aligned one (or -1) is."""
    from poetctl.backends.fs.priority import SLOT, WAYS, _way, key_hash

    h = key_hash("k")
    other = key_hash("other")
    way_with_h_in_ids = other + h + b"\0" * 8 + b"\1" * 16  # h at offset 8: inside the ids
    bucket = way_with_h_in_ids + h + b"\2" * 32 + b"\0" * SLOT * (WAYS - 2)
    assert _way(bucket, h) == SLOT
    assert _way(way_with_h_in_ids + b"\0" * SLOT * (WAYS - 1), h) == -1
    assert _way(way_with_h_in_ids + b"\0" * SLOT * (WAYS - 1), b"\0" * 8) == SLOT  # the first empty way


def test_member_published_but_not_yet_marked_done_waits_instead_of_raising(spool: Path) -> None:
    """A caller checking the queue after its leader took its group off it (not yet marked done) waits, no IndexError."""
    from poetctl.backends.fs.layout import SpoolLayout
    from poetctl.backends.fs.writer import GroupCommitter, _Member

    layout = SpoolLayout(spool)
    c = GroupCommitter(layout, layout.pending)
    m = _Member([])
    waits: list[int] = []

    class Wake:
        """m's wake: the leader marks m done and wakes it while m waits."""

        def wait(self) -> None:
            waits.append(1)
            m.done = True

    m.wake = Wake()  # type: ignore[assignment]
    # The window: the leader removed m's group from the (now empty) queue and has not marked m done.
    assert c._finish(m) is None
    assert waits == [1]
