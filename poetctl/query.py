"""Selecting events across the spool's states, newest first, without reading everything.

Sources per state:

* ``pending`` and ``inflight``: directory listings (names of UUIDv7 ids carry
  their time, others fall back to the file's mtime); only the files that can
  still make the cut are read.
* ``processed`` and ``dead``: the index (``spool/index.py``) when present,
  else directory listings like above.

Every file read is verified (checksum); damaged files are reported through
``on_damaged`` and skipped, never fatal.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from .event import Event
from .ids import time_of
from .spool.index import Index
from .spool.layout import SpoolLayout
from .spool.reader import CorruptEvent, decode_event, read_bytes
from .topics import matches

ALL_STATES = ("pending", "inflight", "processed", "dead")
MAX_READ = 16 * 1024 * 1024


@dataclass(slots=True)
class Selector:
    """Which events: every given criterion must hold (AND); lists are ORs."""

    patterns: Sequence[str] = ()
    types: Sequence[str] = ()
    ids: Sequence[str] = ()
    correlation_id: str | None = None
    source: str | None = None
    since: float | None = None
    until: float | None = None

    def time_ok(self, ts: float) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def match_meta(self, type_: str, topic: str, source: str, correlation_id: str | None, ts: float) -> bool:
        if not self.time_ok(ts):
            return False
        if self.types and not any(fnmatchcase(type_, t) for t in self.types):
            return False
        if self.patterns and not any(matches(p, topic) for p in self.patterns):
            return False
        if self.correlation_id is not None and correlation_id != self.correlation_id:
            return False
        return self.source is None or source == self.source

    def match(self, e: Event) -> bool:
        if self.ids and e.id not in self.ids:
            return False
        return self.match_meta(e.type, e.topic, e.source, e.correlation_id, e.timestamp)


@dataclass(order=True, slots=True)
class Found:
    """An event with where it is."""

    timestamp: float
    id: str
    state: str = field(compare=False)
    path: Path = field(compare=False)
    event: Event = field(compare=False)


def state_dirs(layout: SpoolLayout, state: str) -> list[Path]:
    if state == "inflight":
        return layout.inflight_dirs()
    return [getattr(layout, state)]


def _listing(layout: SpoolLayout, state: str) -> Iterator[tuple[float, str, Path]]:
    """(approximate time, id, path) for every event file in ``state``."""
    for d in state_dirs(layout, state):
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                n = e.name
                if not n.endswith(".json") or n.startswith("."):
                    continue
                ms = time_of(n[:-5])
                if ms is None:
                    try:
                        t = e.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        continue
                else:
                    t = ms / 1000
                yield t, n[:-5], Path(e.path)


def _descending(layout: SpoolLayout, state: str, limit: int | None) -> Iterator[tuple[float, str, Path]]:
    """Listing entries newest first, holding only a growing top-k in memory (not the whole dir)."""
    if limit is None:
        yield from sorted(_listing(layout, state), reverse=True)
        return
    k, done = max(4 * limit, 256), 0
    while True:
        top = heapq.nlargest(k, _listing(layout, state))
        yield from top[done:]
        if len(top) < k:
            return
        done, k = len(top), k * 4


def load(path: Path, state: str, on_damaged: Callable[[Path, str], None] | None) -> Found | None:
    """Read and verify ``path``; None if it vanished or is damaged (reported)."""
    try:
        ev = decode_event(read_bytes(path, MAX_READ), None, where=str(path))
    except FileNotFoundError:
        return None
    except CorruptEvent as exc:
        if on_damaged is not None:
            on_damaged(path, str(exc))
        return None
    return Found(ev.timestamp, ev.id, state, path, ev)


def newest(
    layout: SpoolLayout,
    sel: Selector,
    states: Sequence[str] = ALL_STATES,
    limit: int | None = None,
    on_damaged: Callable[[Path, str], None] | None = None,
    index: Index | None = None,
) -> list[Found]:
    """Up to ``limit`` matching events, newest first (all of them if ``limit`` is None).

    Candidates are visited newest first per source; a source stops as soon as
    it has contributed ``limit`` matches, so ``-n 100`` reads about 100 files
    per state, not the whole spool.
    """
    out: list[Found] = []
    for state in states:
        src: Iterable[tuple[float, str, Path]]
        if index is not None and state in ("processed", "dead"):
            d = getattr(layout, state)
            src = ((r[1], r[0], d / f"{r[0]}.json") for r in index.newest([state], sel.since, sel.until)
                   if sel.match_meta(r[2], r[3], r[4], r[5], r[1]) and (not sel.ids or r[0] in sel.ids))
        else:
            src = _descending(layout, state, limit)
        got = 0
        for t, _eid, path in src:
            # Listing times are approximate (ms, mtime): filter precisely after reading.
            f = load(path, state, on_damaged)
            if f is None or not sel.match(f.event):
                continue
            out.append(f)
            got += 1
            if limit is not None and got >= limit:
                break
    out.sort(reverse=True)
    return out[:limit] if limit is not None else out


def find(layout: SpoolLayout, event_id: str, on_damaged: Callable[[Path, str], None] | None = None) -> Found | None:
    """The event with ``event_id`` in any state (pending, inflight, processed, dead)."""
    for state in ALL_STATES:
        for d in state_dirs(layout, state):
            f = load(d / f"{event_id}.json", state, on_damaged)
            if f is not None:
                return f
    return None
