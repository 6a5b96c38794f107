"""What is connected to an event or correlation id on the spool (``poetctl correlate``, the demo).

"Connected" means: the same correlation id as any member, or a causation link
in either direction, applied until nothing new joins (a fixpoint).

With the index (:mod:`.index`) only the connected events are read: ids,
correlation groups and causation links come from the index for processed and
dead events, and from the pending and in-flight directories (small while a
daemon keeps up) for the rest. Without an index every event file is read once.

Not behind :meth:`~poetctl.transport.Transport.select`: the walk follows
causation links (the index's ``by_causation``), and ``correlate`` warns about
each damaged file it meets; the transport offers neither.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence

from ...chain.forest import STATES, Node, OnDamaged, build_forest, members_of
from ...event import Event
from ...ids import is_event_id
from .index import Index
from .layout import SpoolLayout
from .query import SMALL_SPOOL, Found, find, index_unusable, load_or_find, open_index, read_found, state_dirs
from .sqlitelib import sqlite3

# Below this many indexed events, connected() reads every file instead of using the index.
SCAN_BELOW = SMALL_SPOOL


def iter_found(
    layout: SpoolLayout, states: Sequence[str] = STATES, on_damaged: OnDamaged | None = None
) -> Iterator[Found]:
    """Every readable, verified event in ``states``; damaged files are reported and skipped."""
    for state in states:
        for d in state_dirs(layout, state):
            try:
                names = [n for n in os.listdir(d) if n.endswith(".json") and not n.startswith(".")]
            except FileNotFoundError:
                continue
            for n in names:
                f = read_found(d / n, state, on_damaged)
                if isinstance(f, Found):
                    yield f


def iter_events(
    layout: SpoolLayout, states: tuple[str, ...] = STATES, on_damaged: OnDamaged | None = None
) -> Iterator[tuple[str, Event]]:
    """Every readable event with its state; damaged files are skipped (reported via ``on_damaged``)."""
    for f in iter_found(layout, states, on_damaged):
        yield f.state, f.event


def connected(
    layout: SpoolLayout, ident: str, *, index: Index | bool | None = True, on_damaged: OnDamaged | None = None
) -> list[Node]:
    """Roots of the trees connected to ``ident`` (an event id or a correlation id); [] if unknown.

    ``index``: an open :class:`Index`, True to use the spool's index if it
    exists and is not tiny (:data:`SCAN_BELOW`), or False/None to read every
    event file.
    """
    return build_forest(collect(layout, ident, index=index, on_damaged=on_damaged))


def collect(
    layout: SpoolLayout, ident: str, *, index: Index | bool | None = True, on_damaged: OnDamaged | None = None
) -> dict[str, Found]:
    """The connected events of ``ident`` by id (see :func:`connected`)."""
    idx: Index | None
    own = False
    if isinstance(index, Index):
        idx = index
    elif index:
        # Small spools are read whole: exact even while the daemon's index writes lag behind.
        idx = open_index(layout, SCAN_BELOW)
        own = idx is not None
    else:
        idx = None
    try:
        if idx is not None:
            try:
                return _collect_indexed(layout, ident, idx, on_damaged)
            except sqlite3.DatabaseError as exc:
                # E.g. an immutable read of a database file a starting daemon is checkpointing into.
                index_unusable(exc)
        return _collect_scan(layout, ident, on_damaged)
    finally:
        if own and idx is not None:
            idx.close()


def _collect_scan(layout: SpoolLayout, ident: str, on_damaged: OnDamaged | None) -> dict[str, Found]:
    events: dict[str, Found] = {}
    for f in iter_found(layout, STATES, on_damaged):
        events.setdefault(f.id, f)  # moved during the scan: keep the first sighting
    return members_of(events, ident)


def _collect_indexed(layout: SpoolLayout, ident: str, idx: Index, on_damaged: OnDamaged | None) -> dict[str, Found]:
    # Pending and in-flight events are not indexed; those directories are small, read them whole.
    live: dict[str, Found] = {}
    for f in iter_found(layout, ("pending", "inflight"), on_damaged):
        live.setdefault(f.id, f)
    live_corr: dict[str, list[str]] = {}
    live_children: dict[str, list[str]] = {}
    for eid, f in live.items():
        if f.event.correlation_id:
            live_corr.setdefault(f.event.correlation_id, []).append(eid)
        if f.event.causation_id:
            live_children.setdefault(f.event.causation_id, []).append(eid)

    members: dict[str, Found] = {}
    absent: set[str] = set()
    corr_done: set[str] = set()
    # Queue entries: (id, state the index gives or None).
    queue: deque[tuple[str, str | None]] = deque()

    def locate(eid: str, state: str | None) -> Found | None:
        if eid in live:
            return live[eid]
        if not is_event_id(eid):
            return None
        if state is None:
            row = idx.get(eid)
            state = None if row is None else str(row[7])
        if state in ("processed", "dead"):
            # The index can lag or be stale (replayed, retried): fall back to a lookup by id.
            return load_or_find(layout, getattr(layout, state) / f"{eid}.json", state, eid, on_damaged)
        # Not indexed (yet): look in every state, a handful of stat calls.
        return find(layout, eid, on_damaged)

    def group(cid: str) -> None:
        if cid in corr_done:
            return
        corr_done.add(cid)
        queue.extend((str(r[0]), str(r[7])) for r in idx.by_correlation(cid))
        queue.extend((i, None) for i in live_corr.get(cid, []))

    def join(f: Found) -> None:
        members[f.id] = f
        e = f.event
        if e.correlation_id:
            group(e.correlation_id)
        if e.causation_id and e.causation_id not in members:
            queue.append((e.causation_id, None))
        queue.extend((str(r[0]), str(r[7])) for r in idx.by_causation(f.id))
        queue.extend((i, None) for i in live_children.get(f.id, []))

    first = locate(ident, None)
    if first is not None and first.id == ident:
        join(first)
    group(ident)  # an id may also be used as a correlation id
    while queue:
        eid, state = queue.popleft()
        if eid in members or eid in absent:
            continue
        got = locate(eid, state)
        if got is None:
            absent.add(eid)
        else:
            join(got)
    return members


__all__ = ["SCAN_BELOW", "collect", "connected", "iter_events", "iter_found"]
