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
