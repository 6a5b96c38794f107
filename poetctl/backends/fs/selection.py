"""Finding handled events (processed/ or dead/) on the spool for replay, dead retry and dead purge.

The criteria are a :class:`poetctl.transport.Query` (see
:func:`poetctl.ops.selectors.make_selector`). Candidates come from the cheapest
truthful source:

* ``--id``: the named files directly (and, for ids that are not there, where
  they are instead, for the message);
* ``dead``: a listing of ``events/dead`` (small, and the truth);
* ``processed``: the index (``Index``, a range query on state and time, then
  type/topic/correlation filtered on the row) when it exists, else a listing.

Every candidate is then read and verified before it counts; a damaged file is
reported through ``on_damaged`` and skipped, never fatal. The commands need the
files themselves (replay and dead retry move them), so this stays beside the
spool rather than behind :meth:`~poetctl.transport.Transport.select`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...ops.selectors import Damaged, check_state
from ...transport import Query
from .index import Index
from .layout import SpoolLayout
from .query import Found, load


@dataclass(slots=True)
class Candidate:
    id: str
    path: Path


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


__all__ = ["Candidate", "candidates", "missing_ids", "open_index", "resolve", "state_dir"]
