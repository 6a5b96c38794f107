"""Selecting events across the spool's states, newest first, without reading everything.

Sources per state:

* ``pending`` and ``inflight``: directory listings (names of UUIDv7 ids carry
  their time, others fall back to the file's mtime); only the files that can
  still make the cut are read.
* ``processed`` and ``dead``: the index (:mod:`.index`) when present,
  else directory listings like above. Callers use :func:`open_index` to skip
  an index of fewer than :data:`SMALL_SPOOL` rows: the daemon writes index rows
  a moment after the move, and a small spool is cheaper to read exactly.

Every file read is verified (checksum); damaged files are reported through
``on_damaged`` and skipped, never fatal. A file that vanishes between the
listing and the read has moved on (the daemon claimed or finished it): it is
looked up again in the later states, so a running daemon does not hide events.

This is the spool's read side: :class:`~.transport.FsTransport`'s ``get`` and
``select`` are built on it, and so are the commands whose output needs more
than the transport gives (``tail`` prints the stored bytes and warns about each
damaged file; ``correlate`` walks causation links; ``replay`` moves the files).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ...event import Event
from ...ids import is_event_id, time_of
from ...selection import Query
from .index import Index
from .layout import SpoolLayout
from .reader import CorruptEvent, decode_event, read_bytes
from .sqlitelib import sqlite3

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ALL_STATES = ("pending", "inflight", "processed", "dead")
MAX_READ = 16 * 1024 * 1024
# Directories (and indexes) up to this many events are read whole: exact, and still quick.
SMALL_SPOOL = 2000


_FOUND_FIELDS = ("timestamp", "id", "state", "path", "event", "raw")


class Found:
    """An event with where it is; ordered and compared by (timestamp, id).

    Written out rather than a dataclass (same constructor, repr, order and
    equality): the read-only commands start without importing dataclasses.
    """

    __slots__ = _FOUND_FIELDS
    __hash__ = None  # type: ignore[assignment]  # compared by value, mutable (as the dataclass was)

    def __init__(self, timestamp: float, id: str, state: str, path: Path, event: Event, raw: bytes = b"") -> None:
        self.timestamp = timestamp
        self.id = id
        self.state = state
        self.path = path
        self.event = event
        self.raw = raw

    def _key(self) -> tuple[float, str]:
        return (self.timestamp, self.id)

    def __eq__(self, other: object) -> bool:
        return (
            self._key() == other._key()
            if isinstance(other, Found) and other.__class__ is self.__class__
            else NotImplemented
        )

    def __lt__(self, other: Found) -> bool:
        return self._key() < other._key() if other.__class__ is self.__class__ else NotImplemented

    def __le__(self, other: Found) -> bool:
        return self._key() <= other._key() if other.__class__ is self.__class__ else NotImplemented

    def __gt__(self, other: Found) -> bool:
        return self._key() > other._key() if other.__class__ is self.__class__ else NotImplemented

    def __ge__(self, other: Found) -> bool:
        return self._key() >= other._key() if other.__class__ is self.__class__ else NotImplemented

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__qualname__}(timestamp={self.timestamp!r}, id={self.id!r}, "
            f"state={self.state!r}, path={self.path!r}, event={self.event!r})"
        )

    def replace(self, **changes: Any) -> Found:
        """A copy with ``changes`` (field names), as ``dataclasses.replace``."""
        values = {f: getattr(self, f) for f in _FOUND_FIELDS}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"Found has no field {sorted(unknown)[0]!r}")
        return self.__class__(**{**values, **changes})


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


def _descending(layout: SpoolLayout, state: str, limit: int | None) -> tuple[bool, Iterator[tuple[float, str, Path]]]:
    """Listing entries newest first, holding only a growing top-k in memory (not the whole dir).

    Returns ``(complete, entries)``: complete is True when the directory has at
    most :data:`SMALL_SPOOL` entries (or ``limit`` is None) and all of them are
    yielded, so the caller can read every one and order them exactly.
    """
    if limit is None:
        return True, iter(sorted(_listing(layout, state), reverse=True))
    k = max(4 * limit, SMALL_SPOOL)
    top = heapq.nlargest(k, _listing(layout, state))
    if len(top) < k:
        return True, iter(top)

    def grow(top: list[tuple[float, str, Path]], k: int) -> Iterator[tuple[float, str, Path]]:
        done = 0
        while True:
            yield from top[done:]
            if len(top) < k:
                return
            done, k = len(top), k * 4
            top = heapq.nlargest(k, _listing(layout, state))

    return False, grow(top, k)


class _Vanished:
    """Marker: the file was not there (moved on, or never existed)."""


VANISHED = _Vanished()


def read_found(path: Path, state: str, on_damaged: Callable[[Path, str], None] | None) -> Found | _Vanished | None:
    """Read and verify ``path``: a Found, :data:`VANISHED` if it is not there, None if damaged (reported)."""
    try:
        raw = read_bytes(path, MAX_READ)
        ev = decode_event(raw, None, where=str(path))
    except FileNotFoundError:
        return VANISHED
    except CorruptEvent as exc:
        if on_damaged is not None:
            on_damaged(path, exc.message)
        return None
    except (KeyError, TypeError, ValueError) as exc:
        # A checksum only says the file is what its writer sealed, not that a writer wrote an envelope.
        if on_damaged is not None:
            on_damaged(path, f"bad_envelope: {type(exc).__name__}: {exc}")
        return None
    problem = shape_problem(ev)
    if problem is not None:
        if on_damaged is not None:
            on_damaged(path, f"bad_envelope: {problem}")
        return None
    return Found(ev.timestamp, ev.id, state, path, ev, raw)


_STR_FIELDS = ("type", "source", "topic")
_OPTIONAL_STR_FIELDS = ("correlation_id", "causation_id")


def _is_number(v: object) -> bool:
    return type(v) is float or type(v) is int


def shape_problem(ev: Event) -> str | None:
    """What keeps ``ev`` from being shown and sorted (wrong field types), or None.

    Readers check only the checksum, not the envelope schema (a file sealed by
    hand passes it), so they check the types everything below relies on:
    strings where text is printed, numbers where times are sorted and shown.
    Values are not bounded: an absurd timestamp on disk is shown as its number.
    """
    for name in _STR_FIELDS:
        if not isinstance(getattr(ev, name), str):
            return f"$.{name}: expected a string"
    for name in _OPTIONAL_STR_FIELDS:
        v = getattr(ev, name)
        if v is not None and not isinstance(v, str):
            return f"$.{name}: expected a string"
    if not _is_number(ev.timestamp):
        return "$.timestamp: expected a number"
    if ev.expires_at is not None and not _is_number(ev.expires_at):
        return "$.expires_at: expected a number"
    if not isinstance(ev.payload, dict):
        return "$.payload: expected an object"
    if not isinstance(ev.metadata, dict):
        return "$.metadata: expected an object"
    return None


def load(path: Path, state: str, on_damaged: Callable[[Path, str], None] | None) -> Found | None:
    """Read and verify ``path``; None if it vanished or is damaged (reported)."""
    f = read_found(path, state, on_damaged)
    return f if isinstance(f, Found) else None


def load_or_find(
    layout: SpoolLayout, path: Path, state: str, event_id: str, on_damaged: Callable[[Path, str], None] | None = None
) -> Found | None:
    """Read ``path``; if it has moved on meanwhile, find ``event_id`` wherever it is now."""
    f = read_found(path, state, on_damaged)
    if isinstance(f, _Vanished):
        return find(layout, event_id, on_damaged)
    return f


def newest(
    layout: SpoolLayout,
    sel: Query,
    states: Sequence[str] = ALL_STATES,
    limit: int | None = None,
    on_damaged: Callable[[Path, str], None] | None = None,
    index: Index | None = None,
) -> list[Found]:
    """Up to ``limit`` matching events, newest first (all of them if ``limit`` is None).

    Candidates are visited newest first per source; a source stops as soon as
    it has contributed ``limit`` matches, so ``-n 100`` reads about 100 files
    per state, not the whole spool. With an index and a correlation id, the
    index's correlation lookup replaces the scan of processed/dead. Each id is
    returned once even if it moved between states during the scan.
    """
    if index is not None:
        try:
            return _newest(layout, sel, states, limit, on_damaged, index)
        except sqlite3.DatabaseError as exc:
            # E.g. an immutable read of a database file a starting daemon is checkpointing into.
            index_unusable(exc)
    return _newest(layout, sel, states, limit, on_damaged, None)


def _newest(
    layout: SpoolLayout,
    sel: Query,
    states: Sequence[str],
    limit: int | None,
    on_damaged: Callable[[Path, str], None] | None,
    index: Index | None,
) -> list[Found]:
    found: dict[str, Found] = {}
    for state in states:
        src: Iterable[tuple[float, str, Path]]
        if index is not None and state in ("processed", "dead"):
            exact, src = False, _indexed(layout, index, state, sel, limit)  # index times are exact
        else:
            # Listing times are approximate (ms in the id, else mtime): a small directory is
            # read whole so the order is exact; a large one is read newest first until enough match.
            exact, src = _descending(layout, state, limit)
        got = 0
        for _t, eid, path in src:
            if is_event_id(eid):
                f = load_or_find(layout, path, state, eid, on_damaged)
            else:
                f = load(path, state, on_damaged)
            if f is None or f.state not in states or not sel.match(f.event):
                continue
            found[f.id] = f
            got += 1
            if limit is not None and got >= limit and not exact:
                break
    out = sorted(found.values(), reverse=True)
    return out[:limit] if limit is not None else out


def _indexed(
    layout: SpoolLayout, index: Index, state: str, sel: Query, limit: int | None = None
) -> Iterator[tuple[float, str, Path]]:
    """Index rows of ``state`` that may match ``sel``, newest first, as listing entries (``limit``: how
    many are wanted, so the first batch read from the index is that small)."""
    d: Path = getattr(layout, state)
    rows: Iterable[tuple[object, ...]]
    if sel.correlation_id is not None:
        # A correlation group is small: fetch it directly instead of walking the whole state.
        rows = sorted(
            (r for r in index.by_correlation(sel.correlation_id) if r[7] == state),
            key=lambda r: (r[1], r[0]),
            reverse=True,
        )
    else:
        rows = index.newest([state], sel.since, sel.until, first=limit)
    for r in rows:
        eid, ts = str(r[0]), float(r[1])  # type: ignore[arg-type]
        if not sel.match_meta(r[2], r[3], r[4], r[5], ts):  # type: ignore[arg-type]
            continue
        if sel.ids and eid not in sel.ids:
            continue
        if not is_event_id(eid):
            continue
        yield ts, eid, d / f"{eid}.json"


def open_index(layout: SpoolLayout, min_rows: int = 0) -> Index | None:
    """The spool's index, read-only, if it exists and holds at least ``min_rows`` rows, else None.

    The daemon writes index rows asynchronously (a fraction of a second after
    the move), so the files are the exact answer. Below ``min_rows`` reading
    the directories is cheap enough, and then a just-processed event is never
    missed; above it the index keeps queries independent of the spool's size.
    """
    try:
        idx = Index.open_existing(layout)
        if idx is None or has_rows(idx, min_rows):
            return idx
    except (sqlite3.Error, OSError) as exc:
        # Derived data only: a locked, unreadable or damaged index must not stop a reader.
        index_unusable(exc)
        return None
    idx.close()
    return None


def index_unusable(exc: BaseException) -> None:
    """Warn (on stderr) that the index is skipped and the directories are read instead."""
    import sys

    sys.stderr.write(
        f"poetctl: warning: index unusable ({exc}); reading the spool directories "
        "('poetctl fsck --repair' rebuilds it)\n"
    )


def has_rows(index: Index, n: int) -> bool:
    """True if ``index`` holds at least ``n`` rows (costs O(n), not O(size))."""
    if n <= 0:
        return True
    return index.db.execute("SELECT 1 FROM events LIMIT 1 OFFSET ?", (n - 1,)).fetchone() is not None


def find(layout: SpoolLayout, event_id: str, on_damaged: Callable[[Path, str], None] | None = None) -> Found | None:
    """The event with ``event_id`` in any state (pending, inflight, processed, dead).

    States are tried in the direction events flow, so an event moving forward
    concurrently is still found. Anything that is not a valid event id is
    never joined into a path: the answer is None.
    """
    if not is_event_id(event_id):
        return None
    for state in ALL_STATES:
        for d in state_dirs(layout, state):
            f = load(d / f"{event_id}.json", state, on_damaged)
            if f is not None:
                return f
    return None
