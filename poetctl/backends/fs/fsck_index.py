"""The index part of ``poetctl fsck``: rows against files, and the rebuild.

Only runs when ``events/``, ``processed/``, ``dead/`` and ``index/`` are real
directories (a link is reported by :class:`~poetctl.backends.fs.fsck.Fsck` and the
comparison skipped), and reads event files through their directory
descriptors, never through a link. An ``index/events.sqlite`` that is not a
regular file (a link) is quarantined before a new index is built, so SQLite
never opens a file outside the spool.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import fsck_repair as fx
from .index import Index, index_path, recount, row_of
from .reader import CorruptEvent
from .safefs import SpoolDir

if TYPE_CHECKING:
    from .fsck import Fsck

DRIFT_RECHECK_DELAY = 0.5
LINK_SENSITIVE = {"events", "events/processed", "events/dead", "index"}


class IndexCheck:
    def __init__(self, fsck: Fsck) -> None:
        self.f = fsck
        self.layout = fsck.layout

    def run(self) -> None:
        f = self.f
        if LINK_SENSITIVE & f.linked_dirs:
            return  # reported as linked_dir: the comparison would read or write through it
        processed, dead = f.dir("events/processed"), f.dir("events/dead")
        if processed is None or dead is None:
            return
        handled = {eid: st for eid, st in f.where.items() if st in ("processed", "dead")}
        path = index_path(self.layout)
        idx_dir = f.dir("index")
        kind = None if idx_dir is None else idx_dir.is_regular(path.name)
        if kind is False:
            f.problem(
                "not_regular",
                path,
                "the index is not a regular file (a link?); it is never opened",
                lambda: self._replace_link(processed, dead),
            )
            return
        if kind is None:
            if handled:
                f.problem(
                    "index_missing",
                    path,
                    f"{len(handled)} handled events but no index",
                    lambda: fx.rebuild_index(self.layout, processed, dead),
                )
            return
        try:
            idx, rows = fx.index_rows(self.layout)
        except sqlite3.Error as exc:
            f.problem(
                "index_unreadable", path, str(exc), lambda: fx.rebuild_aside(self.layout, processed, dead, f.clock())
            )
            return
        try:
            f.count("index_rows", len(rows))
            self._check_counts(idx)
            suspects = self._drift(rows, handled)
            if suspects:
                # A daemon indexes a moment after it moves a file: look again before calling it drift.
                time.sleep(DRIFT_RECHECK_DELAY)
                self._confirm_drift(idx, suspects)
        finally:
            idx.close()

    def _check_counts(self, idx: Index) -> None:
        """The per-state counts ``status`` reads against the rows, in one snapshot (a daemon may be writing).

        An index made before the counts has no table: nothing to check (the first writable open adds
        it). Counts that differ from the rows (a program wrote the index without keeping them, e.g. an
        older daemon still running after an upgrade) are recounted in one write transaction.
        """
        db = idx.db
        try:
            db.execute("BEGIN")  # one snapshot for both reads
            try:
                stored = dict(db.execute("SELECT state, n FROM counts WHERE n != 0").fetchall())
                actual = dict(db.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
            finally:
                db.execute("COMMIT")
        except sqlite3.OperationalError:
            return  # no counts table: an index made before them
        if stored != actual:
            detail = f"per-state counts {stored} differ from the rows {actual}"
            self.f.problem("index_counts", index_path(self.layout), detail, self._recount(idx))

    @staticmethod
    def _recount(idx: Index) -> Callable[[], str | None]:
        def fix() -> str | None:
            idx.for_writing()
            recount(idx.db)
            return "counts recomputed from the rows"

        return fix

    def _replace_link(self, processed: SpoolDir, dead: SpoolDir) -> str | None:
        idx_dir = self.f.dir("index")
        if idx_dir is None:
            return None
        moved = fx.quarantine_fix(self.layout, idx_dir, "events.sqlite", "not_regular", "the index is not a file")()
        if moved is None:
            return None
        return f"{moved}; {fx.rebuild_index(self.layout, processed, dead)}"

    @staticmethod
    def _drift(rows: dict[str, str], handled: dict[str, str]) -> list[str]:
        out = [eid for eid, st in handled.items() if rows.get(eid) != st]
        out += [eid for eid in rows if eid not in handled]
        return out

    def _file_state(self, eid: str) -> str | None:
        for st in ("processed", "dead"):
            if fx.lexists(self.f.dir(f"events/{st}"), f"{eid}.json"):
                return st
        return None

    def _confirm_drift(self, idx: Index, suspects: list[str]) -> None:
        f = self.f
        for eid in suspects:
            r = idx.get(eid)
            row_state = r[7] if r is not None else None
            file_state = self._file_state(eid)
            if file_state is not None and "," in f.where.get(eid, ""):
                continue  # a duplicate, reported as such
            if file_state is not None and file_state not in f.where.get(eid, ""):
                continue  # a file that turned up or changed state after the scan: not ours to judge
            if row_state == file_state:
                continue
            if file_state is None:
                f.problem(
                    "index_orphan_row",
                    f"index:{eid}",
                    f"row says {row_state} but there is no file",
                    self._del_row(idx, eid),
                )
            elif row_state is None:
                f.problem(
                    "index_missing_row",
                    f"events/{file_state}/{eid}.json",
                    "not in the index",
                    self._put_row(idx, eid, file_state),
                )
            else:
                f.problem(
                    "index_wrong_state",
                    f"events/{file_state}/{eid}.json",
                    f"row says {row_state}, file is in {file_state}",
                    self._put_row(idx, eid, file_state),
                )

    @staticmethod
    def _del_row(idx: Index, eid: str) -> Callable[[], str | None]:
        def fix() -> str | None:
            idx.delete([eid])
            return "row deleted"

        return fix

    def _put_row(self, idx: Index, eid: str, state: str) -> Callable[[], str | None]:
        def fix() -> str | None:
            d = self.f.dir(f"events/{state}")
            if d is None:
                return None
            try:
                ev = self.f.load(d, f"{eid}.json", None)
            except (FileNotFoundError, CorruptEvent):
                return None
            idx.put([row_of(ev, state)])
            return "row written"

        return fix
