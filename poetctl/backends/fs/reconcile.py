"""Bring the index back in line with the files after a daemon died.

The daemon writes index rows a moment after it files events (in batches),
and its completion mover files events the daemon already handed over, even
after the daemon died. A SIGKILL therefore loses rows: ``status`` undercounts
and ``tail --state processed`` misses events until someone reconciles.

Start-up stays cheap when nothing crashed: every daemon puts a mark
``daemon:<owner>`` in the index's ``meta`` table when it starts and removes
it when it stops cleanly. A mark whose owner is gone means that daemon died;
once its in-flight directory has been recovered (so its mover has finished
filing), one full comparison of ``processed/`` and ``dead/`` with the rows
adds the missing rows, fixes wrong states and removes rows of events that
are no longer handled, and then drops the marks it covered. Only then is
the listing paid for.

Safe beside live daemons: a row that looks orphaned is removed only if its
file is in neither ``processed/``, ``dead/`` nor any in-flight directory at
the moment of the decision (a live daemon writes the row of an event its
mover has not filed yet).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from ...daemon import log
from ...errors import SpoolIOError
from ...event import Event
from ...ids import EVENT_ID_RE
from .index import Index, row_of
from .layout import SpoolLayout
from .reader import CorruptEvent, decode_event, read_bytes
from .safefs import SpoolDir

MARK = "daemon:"
HANDLED = ("processed", "dead")
CHUNK = 10_000


@dataclass(slots=True)
class Reconciled:
    added: int = 0
    fixed: int = 0
    removed: int = 0
    owners: list[str] = field(default_factory=list)


class Reconciler:
    """The crash marks of one daemon and the reconciliation they trigger.

    ``alive(owner)`` says whether a marked owner still runs; ``max_bytes``
    bounds what is read of an event file.
    """

    def __init__(self, layout: SpoolLayout, owner: str, alive: Callable[[str], bool], max_bytes: int) -> None:
        self.layout = layout
        self.owner = owner
        self.alive = alive
        self.max_bytes = max_bytes
        self._idx: Index | None = None
        self._warned = False
        self.due = False

    # -- marks ----------------------------------------------------------------------------
    def start(self) -> None:
        """Mark this daemon as running; note whether a dead daemon left its mark."""
        idx = self._open()
        if idx is None:
            return
        try:
            idx.db.execute("INSERT OR REPLACE INTO meta VALUES (?, 'running')", (MARK + self.owner,))
        except sqlite3.Error as exc:
            self._failed(exc)
            return
        self.due = bool(self.dead_owners())

    def dead_owners(self) -> list[str]:
        """Owners whose mark is left while they are gone (they died)."""
        idx = self._open()
        if idx is None:
            return []
        try:
            keys = [k for (k,) in idx.db.execute("SELECT key FROM meta WHERE key >= ? AND key < ?", (MARK, "daemon;"))]
        except sqlite3.Error as exc:
            self._failed(exc)
            return []
        return [k[len(MARK) :] for k in keys if k[len(MARK) :] != self.owner and not self.alive(k[len(MARK) :])]

    def finish(self) -> None:
        """Clean stop: remove this daemon's mark (after the last rows were written)."""
        idx = self._idx
        if idx is not None:
            try:
                idx.db.execute("DELETE FROM meta WHERE key=?", (MARK + self.owner,))
            except sqlite3.Error:
                pass  # the next daemon reconciles once more: harmless
            idx.close()
            self._idx = None

    # -- reconciling -----------------------------------------------------------------------------
    def ready(self) -> list[str]:
        """Dead owners whose in-flight directory was recovered (so their mover finished filing).

        Also sets :attr:`due`: True while any dead owner's mark is left.
        """
        owners = self.dead_owners()
        self.due = bool(owners)
        if any(os.path.lexists(self.layout.inflight / o) for o in owners):
            return []  # not recovered yet (its mover may still be filing): later, all at once
        return owners

    def run(self, owners: list[str]) -> Reconciled | None:
        """Reconcile the index with the files, then drop the marks of ``owners``."""
        idx = self._idx
        if idx is None or not owners:
            return None
        try:
            result = reconcile(self.layout, idx, self.max_bytes)
            idx.db.executemany("DELETE FROM meta WHERE key=?", [(MARK + o,) for o in owners])
        except (sqlite3.Error, OSError, SpoolIOError) as exc:
            self._failed(exc)
            return None
        self.due = False
        result.owners = owners
        log.reconciled(result.added, result.fixed, result.removed, owners)
        return result

    def _open(self) -> Index | None:
        if self._idx is None:
            try:
                self._idx = Index(self.layout)
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
                return None
        return self._idx

    def _failed(self, exc: BaseException) -> None:
        if not self._warned:  # once: the index is derived data, handling goes on without it
            self._warned = True
            log.warning("cannot reconcile the index; 'poetctl fsck --repair' rebuilds it", error=str(exc))
        self.due = False


def reconcile(layout: SpoolLayout, idx: Index, max_bytes: int) -> Reconciled:
    """One full comparison of ``processed/`` and ``dead/`` with the index rows; fixes the rows."""
    db = idx.db
    db.execute("CREATE TEMP TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID")
    db.execute("DELETE FROM temp.files")
    dirs = {state: SpoolDir(layout, f"events/{state}") for state in HANDLED}
    try:
        for state, d in dirs.items():
            batch: list[tuple[str, str]] = []
            for e in d.entries():
                n = e.name
                if n.endswith(".json") and not n.startswith(".") and EVENT_ID_RE.match(n[:-5]):
                    batch.append((n[:-5], state))
                    if len(batch) >= CHUNK:
                        db.executemany("INSERT OR IGNORE INTO temp.files VALUES (?, ?)", batch)
                        batch = []
            db.executemany("INSERT OR IGNORE INTO temp.files VALUES (?, ?)", batch)
        out = Reconciled()
        drift = db.execute(
            "SELECT f.id, f.state, e.state FROM temp.files f LEFT JOIN events e ON e.id = f.id "
            "WHERE e.state IS NOT f.state"
        ).fetchall()
        rows = []
        for eid, state, row_state in drift:
            ev = _read(dirs[state], eid, max_bytes)
            if ev is None:
                continue  # gone or damaged since the listing: fsck's business
            rows.append(row_of(ev, state))
            if row_state is None:
                out.added += 1
            else:
                out.fixed += 1
        idx.put(rows)
        orphans = [
            eid
            for (eid,) in db.execute(
                "SELECT id FROM events e WHERE NOT EXISTS (SELECT 1 FROM temp.files f WHERE f.id = e.id)"
            )
        ]
        gone = [eid for eid in orphans if not _handled_or_in_flight(layout, eid)]
        idx.delete(gone)
        out.removed = len(gone)
        db.execute("DELETE FROM temp.files")
        return out
    finally:
        for d in dirs.values():
            d.close()


def _handled_or_in_flight(layout: SpoolLayout, eid: str) -> bool:
    """Keep a row whose file turned up after the listing, or that a live daemon's mover is about to file.

    Anything else (back in pending after a recovery, pruned, gone) has a stale
    row: an event is indexed again when it is handled.
    """
    name = f"{eid}.json"
    return any(os.path.lexists(p / name) for p in (layout.processed, layout.dead, *layout.inflight_dirs()))


def _read(d: SpoolDir, eid: str, max_bytes: int) -> Event | None:
    try:
        data = read_bytes(f"{eid}.json", max_bytes, dir_fd=d.fd, where=f"{d.path}/{eid}.json")
        return decode_event(data, None, where=f"{d.path}/{eid}.json", expected_id=eid)
    except (FileNotFoundError, CorruptEvent):
        return None
