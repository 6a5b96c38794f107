"""Selecting handled events (processed/ or dead/) for replay, dead retry and dead purge.

The criteria are :class:`poetctl.transport.Query` (every given criterion must
hold). Candidates come from the cheapest truthful source:

* ``--id``: the named files directly (and, for ids that are not there, where
  they are instead, for the message);
* ``dead``: a listing of ``events/dead`` (small, and the truth);
* ``processed``: the index (``Index``, a range query on state and time, then
  type/topic/correlation filtered on the row) when it exists, else a listing.

Every candidate is then read and verified before it counts; a damaged file is
reported through ``on_damaged`` and skipped, never fatal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from ..backends.fs.index import Index
from ..backends.fs.layout import SpoolLayout
from ..errors import InvalidData, UsageError
from ..ids import EVENT_ID_RE
from ..query import Found, load
from ..timeparse import parse_time
from ..topics import validate_pattern
from ..transport import Query

SOURCE_STATES = ("processed", "dead")
Damaged = Callable[[Path, str], None]


@dataclass(slots=True)
class Criteria:
    """The selector options as given on the command line (strings, unparsed)."""

    since: str | None = None
    until: str | None = None
    types: Sequence[str] = ()
    topics: Sequence[str] = ()
    correlation_id: str | None = None
    ids: Sequence[str] = ()

    def empty(self) -> bool:
        return not (self.since or self.until or self.types or self.topics or self.correlation_id or self.ids)


def read_ids(values: Sequence[str], stdin: IO[bytes] | None = None) -> list[str]:
    """Expand ``--id`` values: ``-`` reads ids from stdin, one per line or word.

    Lines that are JSON objects contribute their ``id`` (so the JSON lines of
    ``dead list`` or ``tail`` can be piped in). Order is kept, duplicates are
    dropped. Raises :class:`UsageError` for a bad id argument and
    :class:`InvalidData` naming ``<stdin>:LINE`` for a bad line.
    """
    out: list[str] = []
    for v in values:
        if v == "-":
            data = (stdin or sys.stdin.buffer).read()
            for lineno, line in enumerate(data.splitlines(), 1):
                s = line.strip()
                if not s or s.startswith(b"#"):
                    continue
                if s.startswith(b"{"):
                    try:
                        obj = orjson.loads(s)
                    except orjson.JSONDecodeError as exc:
                        raise InvalidData(f"invalid JSON: {exc}", where=f"<stdin>:{lineno}") from None
                    eid = obj.get("id") if isinstance(obj, dict) else None
                    if not isinstance(eid, str) or not EVENT_ID_RE.match(eid):
                        raise InvalidData(f"$.id: expected an event id, got {eid!r}", where=f"<stdin>:{lineno}")
                    out.append(eid)
                    continue
                for word in s.decode("utf-8", "replace").split():
                    if not EVENT_ID_RE.match(word):
                        raise InvalidData(
                            f"{word!r} is not an event id (expected {EVENT_ID_RE.pattern})", where=f"<stdin>:{lineno}"
                        )
                    out.append(word)
        else:
            if not EVENT_ID_RE.match(v):
                raise UsageError(f"--id {v!r}: not an event id (expected {EVENT_ID_RE.pattern}, or - for stdin)")
            out.append(v)
    return list(dict.fromkeys(out))


def make_selector(c: Criteria, stdin: IO[bytes] | None = None) -> Query:
    """Parse and check the criteria; raises :class:`UsageError` (2) for bad values."""
    since = parse_time(c.since, option="--since") if c.since else None
    until = parse_time(c.until, option="--until") if c.until else None
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be earlier than --until")
    topics = [validate_pattern(t) for t in c.topics]
    ids = read_ids(c.ids, stdin) if c.ids else []
    if c.ids and not ids:
        raise UsageError("--id -: no ids on stdin")
    return Query(topics=topics, types=list(c.types), ids=ids, correlation_id=c.correlation_id, since=since, until=until)


@dataclass(slots=True)
class Candidate:
    id: str
    path: Path


def check_state(state: str) -> str:
    if state not in SOURCE_STATES:
        raise UsageError(f"--from {state!r}: expected one of {', '.join(SOURCE_STATES)}")
    return state


def state_dir(layout: SpoolLayout, state: str) -> Path:
    return getattr(layout, check_state(state))  # type: ignore[no-any-return]


def _listing(directory: Path) -> list[Candidate]:
    try:
        it = os.scandir(directory)
    except FileNotFoundError:
        return []
    with it:
        return [
            Candidate(e.name[:-5], Path(e.path)) for e in it if e.name.endswith(".json") and not e.name.startswith(".")
        ]


def _from_index(index: Index, state: str, directory: Path, sel: Query) -> list[Candidate]:
    q = "SELECT id, ts, type, topic, source, correlation_id FROM events WHERE state=?"
    args: list[object] = [state]
    if sel.since is not None:
        q += " AND ts >= ?"
        args.append(sel.since)
    if sel.until is not None:
        q += " AND ts < ?"
        args.append(sel.until)
    if sel.correlation_id is not None:
        q += " AND correlation_id = ?"
        args.append(sel.correlation_id)
    q += " ORDER BY ts, id"
    out: list[Candidate] = []
    cur = index.db.execute(q, args)
    while True:
        rows = cur.fetchmany(5000)
        if not rows:
            return out
        for eid, ts, type_, topic, source, corr in rows:
            if sel.match_meta(type_, topic, source, corr, ts):
                out.append(Candidate(eid, directory / f"{eid}.json"))


def candidates(layout: SpoolLayout, state: str, sel: Query, index: Index | None) -> tuple[list[Candidate], str]:
    """Files that may match (not yet read), oldest first where known; and the source used."""
    directory = state_dir(layout, state)
    if sel.ids:
        return [Candidate(i, directory / f"{i}.json") for i in sel.ids], "ids"
    if state == "processed" and index is not None:
        return _from_index(index, state, directory, sel), "index"
    return sorted(_listing(directory), key=lambda c: c.id), "listing"


def resolve(cands: Iterable[Candidate], state: str, sel: Query, on_damaged: Damaged | None) -> Iterator[Found]:
    """Read and verify each candidate; yield those that match. Vanished files are skipped silently."""
    for c in cands:
        f = load(c.path, state, on_damaged)
        if f is not None and sel.match(f.event):
            yield f


def missing_ids(layout: SpoolLayout, state: str, ids: Iterable[str], found: set[str]) -> list[tuple[str, str]]:
    """For ids asked for but not found in ``state``: (id, where it is instead, in words)."""
    out = []
    for eid in ids:
        if eid in found:
            continue
        where = layout.locate(eid)
        if where is None:
            out.append((eid, "no such event in the spool"))
            continue
        rel = where.parent.relative_to(layout.events)
        if rel.parts[0] == state:
            out.append((eid, f"events/{rel}/{where.name} is damaged or does not match the other selectors"))
        else:
            out.append((eid, f"it is in events/{rel.parts[0]}/, not {state}/"))
    return out


def open_index(layout: SpoolLayout, warn: Callable[[str], None]) -> Index | None:
    """The spool's index if it exists and opens; a warning (and None: fall back to listings) if broken."""
    import sqlite3

    try:
        return Index.open_existing(layout)
    except (sqlite3.Error, OSError) as exc:
        warn(f"index unusable ({exc}); listing directories instead ('poetctl fsck --repair' rebuilds it)")
        return None
