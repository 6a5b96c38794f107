"""The fs consumer at large events and backlogs (issue 14): a bound on leased bytes, rescans spaced by listings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from poetctl.backends.fs.transport import FsTransport
from poetctl.daemon.core import Daemon, DaemonOptions
from poetctl.router import EventRouter
from poetctl.testing import FakeClock
from poetctl.transport import Attempt


def _large(i: int) -> dict[str, Any]:
    return {"service": "t", "metrics": {f"m{k:03d}": i + k * 0.5 for k in range(200)}}


def _spool(tmp_path: Path, n: int) -> tuple[FsTransport, EventRouter, list[str], int]:
    transport = FsTransport(tmp_path / "spool")
    router = EventRouter(transport=transport)
    ids = router.emit_many([("system.metrics", _large(i)) for i in range(n)])
    size = max(p.stat().st_size for p in (tmp_path / "spool" / "events" / "pending").iterdir())
    return transport, router, ids, size


def test_fetch_stops_claiming_at_the_lease_byte_limit_and_resumes_as_leases_end(tmp_path: Path) -> None:
    """fetch stops at lease_bytes_limit of files (plus the event crossing it); acks make room and wake the loop."""
    transport, _router, ids, size = _spool(tmp_path, 12)
    c = transport.consumer(watch=False, mover_backlog=-1)
    try:
        c.lease_bytes_limit = 3 * size
        first = c.fetch(256)
        assert 3 <= len(first.deliveries) <= 4 < len(ids)
        assert c.leased_bytes < c.lease_bytes_limit + size  # stops at the first event crossing the limit
        assert not first.more  # waits for room rather than having the loop fetch in a busy circle
        assert c.fetch(256).deliveries == []
        c.wake.clear()
        for d in first.deliveries:
            c.ack(d)
        assert c.wake.is_set()  # the loop's wait ends: room again
        assert c.leased_bytes == 0
        got = [d.id for d in first.deliveries]
        while len(got) < len(ids):
            batch = c.fetch(256).deliveries
            assert 1 <= len(batch) <= 4
            got += [d.id for d in batch]
            for d in batch:
                c.ack(d)
        assert got == ids  # order kept across the pauses
    finally:
        c.close()


def test_a_parked_retry_does_not_count_against_the_lease_byte_limit(tmp_path: Path) -> None:
    """A failed delivery waiting for its retry frees its bytes: other keys' events are still claimed."""
    transport, _router, _ids, size = _spool(tmp_path, 4)
    c = transport.consumer(watch=False, mover_backlog=-1, key_of=lambda e: e.id)
    try:
        c.lease_bytes_limit = 2 * size
        batch = c.fetch(256).deliveries
        assert 2 <= len(batch) < 4
        for d in batch:
            c.fail(d, Attempt("h", 1, 0.0, "boom"), not_before=1e12)
        assert c.leased_bytes == 0
        assert len(c.fetch(256).deliveries) == 4 - len(batch)
    finally:
        c.close()


def test_daemon_once_drains_large_events_through_the_byte_limit(tmp_path: Path) -> None:
    """daemon --once with a byte limit a few events wide still handles every event, in order, and exits 0."""
    _transport, router, ids, size = _spool(tmp_path, 30)
    seen: list[str] = []
    router.subscribe("system.metrics", lambda e: seen.append(e.id), name="h")
    d = Daemon(router, DaemonOptions(once=True, watch=False, workers=2))
    d.consumer.lease_bytes_limit = 4 * size
    assert d.run() == 0
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)
    assert d.consumer.leased_bytes == 0


def test_a_listing_slower_than_the_rescan_interval_does_not_make_every_fetch_list_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic rescan is timed from the end of the fetch that listed: a slow listing is followed by work."""
    from poetctl.backends.fs.claims import Claims

    clock = FakeClock()
    transport = FsTransport(tmp_path / "spool", clock=clock)
    router = EventRouter(transport=transport)
    ids = router.emit_many([("system.metrics", {"service": "t", "metrics": {"n": i}}) for i in range(30)])
    listings = []
    real = Claims.list_window

    def slow_listing(self: Claims) -> None:
        listings.append(clock())
        real(self)
        clock.advance(3 * 5.0)  # the listing of a huge backlog on a busy machine: longer than rescan_interval

    monkeypatch.setattr(Claims, "list_window", slow_listing)
    c = transport.consumer(watch=False, mover_backlog=-1, rescan_interval=5.0)
    try:
        got = []
        for _ in range(3):
            batch = c.fetch(10).deliveries
            got += [d.id for d in batch]
            for d in batch:
                c.ack(d)
        assert got == ids
        assert len(listings) == 1  # before: one full listing per fetch of 10
    finally:
        c.close()
