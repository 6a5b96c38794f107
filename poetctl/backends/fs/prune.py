"""``poetctl prune``: retention for handled events, feedback and tmp leftovers.

What goes (older than ``days``, by event time):

* ``events/processed/<id>.json``: the index gives the candidates when it
  exists (a range scan on ``(state, ts)``, paged by ``(ts, id)``); then one
  listing of ``processed/`` finds the files the index does not know (not yet
  indexed, or indexed under another state), aged by the UUIDv7 time in their
  name (:func:`poetctl.ids.time_of`), or by their content for other ids.
* ``feedback/processed/*.json``: by the record's ``received_at`` (the feedback
  event's time), else the file's mtime.
* ``events/tmp/*``: leftovers of interrupted writers older than a day (mtime).
* with ``dead=True``: ``events/dead/<id>.json`` with its ``<id>.error``, and
  ``.error`` files whose event is gone (by mtime).

Never anything else: pending, in-flight, corrupt, records, state and run are
not touched. Deletion goes through :class:`~poetctl.backends.fs.safefs.SpoolDir`:
only regular files, by name relative to an ``O_NOFOLLOW`` descriptor of the
spool's own directory, so links are never followed, subdirectories are never
descended and nothing outside the spool is ever read or removed. A spool
directory that is itself a symlink is reported (one line) and skipped, and
the run ends with exit 74 (:attr:`PruneReport.linked`). Index rows are
deleted in batches of 10,000 after their files; the unlinks of a batch run
on 64 threads (an unlink mostly waits for the disk). Names the index gives
are unlinked without an ``lstat`` each: one listing of ``processed/`` at the
start finds the names that are not regular files, and only those are looked
at (and left alone) one by one.
"""

from __future__ import annotations

import gc
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ...ids import time_of
from .index import Index
from .layout import SpoolLayout
from .reader import CorruptEvent, decode_event
from .safefs import LinkedDir, SpoolDir, linked_dir, open_dir

TMP_MAX_AGE = 86400.0
# 64, not 16: with synchronous discards more unlinks in flight overlap more waits (bench/prune.py:
# prune went from 1.0-1.2x to 1.5-1.7x a 16-thread bare loop in the same run).
UNLINK_THREADS = 64
CHUNK = 64
PAGES_IN_FLIGHT = 2
ROW_BATCH = 10000
MAX_READ = 16 * 1024 * 1024


@dataclass(slots=True)
class PruneReport:
    """Counts of what was (or, in a dry run, would be) removed."""

    days: float
    cutoff: float
    dry_run: bool
    processed: int = 0
    feedback: int = 0
    tmp: int = 0
    dead: int = 0
    dead_errors: int = 0
    index_rows: int = 0
    skipped: int = 0
    damaged: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = self.problems[:50]
        d["seconds"] = round(self.seconds, 3)
        return d


class Pruner:
    def __init__(
        self,
        layout: SpoolLayout,
        days: float,
        *,
        index: Index | None,
        dead: bool = False,
        dry_run: bool = False,
        now: float | None = None,
        warn: Callable[[str], None] = lambda m: None,
        advance: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.layout = layout
        self.now = time.time() if now is None else now
        self.cutoff = self.now - days * 86400
        self.index = index
        self.dead = dead
        self.dry_run = dry_run
        self.warn = warn
        self.advance = advance
        self.report = PruneReport(days=days, cutoff=self.cutoff, dry_run=dry_run)
        self._pool: ThreadPoolExecutor | None = None

    def shutdown(self) -> None:
        """Stop the unlink threads (after the last pass; :meth:`run` does it)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _problem(self, msg: str) -> None:
        self.report.problems.append(msg)
        self.warn(msg)

    def linked(self, exc: LinkedDir) -> None:
        """A spool directory is a link: report it (one line) and skip everything in it."""
        self.report.linked.append(str(exc.path))
        self.warn(f"{exc.message}; skipped")

    def _open(self, rel: str) -> SpoolDir | None:
        try:
            return open_dir(self.layout, rel)
        except LinkedDir as exc:
            self.linked(exc)
            return None

    def run(self) -> PruneReport:
        t0 = time.monotonic()
        # Pages of names, futures and results are many small objects and none is cyclic: the
        # cyclic collector's passes (holding the GIL the unlink threads wait for) buy nothing here.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.processed()
            self.feedback()
            self.tmp()
            if self.dead:
                self.dead_letters()
        finally:
            self.shutdown()
            if collecting:
                gc.enable()
        self.report.seconds = time.monotonic() - t0
        return self.report

    # -- removing ---------------------------------------------------------------------
    # An unlink mostly waits for the disk (on a filesystem mounted with ``discard`` it is a
    # synchronous trim of the freed block) and os.unlink releases the GIL, so the unlinks run on
    # UNLINK_THREADS threads, fed in small chunks (no slowest-slice barrier), while the main
    # thread reads the next page of the index and deletes the rows of pages already done.
    def _one(self, d: SpoolDir, item: tuple[str, bool | None]) -> bool | None:
        """Remove a regular file (or pretend to). True removed, None gone, False not regular (left alone)."""
        name, known = item
        # A listing's d_type is enough to delete on; a dry run or a name from the index needs an lstat.
        reg = d.is_regular(name) if self.dry_run or known is None else known
        if not reg:
            return reg
        try:
            return True if self.dry_run or d.unlink(name) else None
        except IsADirectoryError:  # became a directory after the listing that said otherwise
            return False

    def _remove(self, d: SpoolDir, name: str, known: bool | None = None) -> bool | None:
        """:meth:`_one` on this thread, reporting a name left alone."""
        r = self._one(d, (name, known))
        if r is False:
            self.report.skipped += 1
            self._problem(f"{d.path}/{name}: not a regular file (a link?); left alone")
        return r

    def _submit(self, d: SpoolDir, items: list[tuple[str, bool | None]]) -> list[Future[list[bool | None]]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(UNLINK_THREADS, thread_name_prefix="poetctl-prune")
        return [
            self._pool.submit(lambda c: [self._one(d, i) for i in c], items[k : k + CHUNK])
            for k in range(0, len(items), CHUNK)
        ]

    def _collect(
        self, d: SpoolDir, items: list[tuple[str, bool | None]], futures: list[Future[list[bool | None]]]
    ) -> list[bool | None]:
        results = [r for f in futures for r in f.result()]
        for (name, _), r in zip(items, results, strict=True):
            if r is False:
                self.report.skipped += 1
                self._problem(f"{d.path}/{name}: not a regular file (a link?); left alone")
        return results

    def _remove_many(self, d: SpoolDir, items: list[tuple[str, bool | None]]) -> list[bool | None]:
        return self._collect(d, items, self._submit(d, items))

    def _drop_rows(self, ids: list[str]) -> None:
        if self.index is not None and ids and not self.dry_run:
            self.index.delete_batch(ids)
        self.report.index_rows += len(ids) if self.index is not None else 0

    def processed(self) -> None:
        d = self._open("events/processed")
        if d is None:
            return
        # Ids the index pass already counted but whose file is still listed (dry run, or left alone).
        counted: set[str] = set()
        with d:
            if self.index is not None:
                # Regular files are unlinked without an lstat each (one syscall and one GIL hand-off
                # fewer per event); the few names that were not regular files when listed are looked
                # at one by one. A name that turns into a link after the listing loses only the link
                # (unlinkat never follows one), as it would between an lstat and the unlink.
                odd = self._not_regular(d)
                pages: deque[tuple[list[str], list[tuple[str, bool | None]], list[Any]]] = deque()

                def finish() -> None:
                    ids, items, futures = pages.popleft()
                    gone: list[str] = []
                    for eid, r in zip(ids, self._collect(d, items, futures), strict=True):
                        if r:
                            self.report.processed += 1
                        if r is not False:
                            gone.append(eid)  # removed, or a row whose file was already gone
                        if r is False or self.dry_run:
                            counted.add(eid)
                    self._drop_rows(gone)  # rows go only after their files
                    self.advance(len(ids))

                for ids in self.index.older_than("processed", self.cutoff, ROW_BATCH):
                    known = None if self.dry_run else True
                    items: list[tuple[str, bool | None]] = [
                        (n, None if n in odd else known) for n in [f"{eid}.json" for eid in ids]
                    ]
                    pages.append((ids, items, self._submit(d, items)))
                    if len(pages) > PAGES_IN_FLIGHT:
                        finish()
                while pages:
                    finish()
            self._processed_unindexed(d, counted)
            if self.report.processed and not self.dry_run:
                d.fsync()

    def _not_regular(self, d: SpoolDir) -> set[str]:
        """Names in ``d`` that are not regular files (links, directories...), from one listing."""
        if self.dry_run:
            return set()  # a dry run lstats every name anyway (it also learns which exist)
        return {e.name for e in d.entries() if not e.is_file(follow_symlinks=False)}

    def _processed_unindexed(self, d: SpoolDir, counted: set[str]) -> None:
        """Expired files the index did not give us: aged by name (UUIDv7) or content; an index row wins."""
        cands: list[tuple[str, bool]] = []
        cutoff_ms = self.cutoff * 1000
        for e in d.entries():
            n = e.name
            if not n.endswith(".json") or n.startswith(".") or n[:-5] in counted:
                continue
            ms = time_of(n[:-5])
            if ms is None or ms < cutoff_ms:
                cands.append((n, e.is_file(follow_symlinks=False)))
        if not cands:
            return
        known_ts: dict[str, float] = {}
        if self.index is not None:
            names = [n[:-5] for n, _ in cands]
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                known_ts.update(self.index.db.execute(f"SELECT id, ts FROM events WHERE id IN ({marks})", chunk))
        doomed: list[tuple[str, bool | None]] = []
        for n, is_file in cands:
            eid = n[:-5]
            ts = known_ts.get(eid)
            if ts is None and time_of(eid) is None:
                ts = self._event_time(d, n) if is_file else None
                if ts is None and is_file:
                    continue
            if ts is None or ts < self.cutoff:
                doomed.append((n, is_file))
        for start in range(0, len(doomed), ROW_BATCH):
            part = doomed[start : start + ROW_BATCH]
            self.report.processed += sum(1 for r in self._remove_many(d, part) if r)
            self.advance(len(part))

    def _event_time(self, d: SpoolDir, name: str) -> float | None:
        path = d.path / name
        try:
            ev = decode_event(d.read(name, MAX_READ), None, where=str(path), expected_id=name[:-5])
        except FileNotFoundError:
            return None
        except CorruptEvent as exc:
            self.report.damaged += 1
            self._problem(f"{exc}; skipped ('poetctl fsck --repair' quarantines it)")
            return None
        return ev.timestamp

    # -- feedback --------------------------------------------------------------------
    def feedback(self) -> None:
        d = self._open("feedback/processed")
        if d is None:
            return
        n = 0
        with d:
            for e in d.entries():
                if not e.name.endswith(".json") or e.name.startswith("."):
                    continue
                if not e.is_file(follow_symlinks=False):
                    self.report.skipped += 1
                    self._problem(f"{d.path}/{e.name}: not a regular file (a link?); left alone")
                    continue
                if self._feedback_time(d, e) >= self.cutoff:
                    continue
                if self._remove(d, e.name, True):
                    n += 1
            if n and not self.dry_run:
                d.fsync()
        self.report.feedback += n

    def _feedback_time(self, d: SpoolDir, e: Any) -> float:
        try:
            rec = orjson.loads(d.read(e.name, MAX_READ))
            t = rec.get("received_at") if isinstance(rec, dict) else None
            if isinstance(t, int | float) and not isinstance(t, bool):
                return float(t)
        except (OSError, CorruptEvent, orjson.JSONDecodeError):
            pass
        try:
            return d.lstat(e.name).st_mtime
        except FileNotFoundError:
            return float("inf")

    # -- tmp --------------------------------------------------------------------------
    def tmp(self) -> None:
        d = self._open("events/tmp")
        if d is None:
            return
        limit = self.now - TMP_MAX_AGE
        n = 0
        with d:
            for e in d.entries():
                try:
                    st = d.lstat(e.name)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_mtime >= limit:
                    continue
                if self._remove(d, e.name, True):
                    n += 1
        self.report.tmp += n

    # -- dead (only when asked) ----------------------------------------------------------
    def dead_letters(self) -> None:
        d = self._open("events/dead")
        if d is None:
            return
        with d:
            entries = {e.name: e.is_file(follow_symlinks=False) for e in d.entries()}
            removed: list[str] = []
            for n, is_file in entries.items():
                if n.startswith(".") or not n.endswith(".json"):
                    continue
                eid = n[:-5]
                ts = self._event_time(d, n) if is_file else None
                if not is_file:
                    self.report.skipped += 1
                    self._problem(f"{d.path}/{n}: not a regular file (a link?); left alone")
                if ts is None or ts >= self.cutoff:
                    continue
                if self._remove(d, n, True):
                    self.report.dead += 1
                    removed.append(eid)
                    err = f"{eid}.error"
                    if err in entries and self._remove(d, err, entries[err]):
                        self.report.dead_errors += 1
            for n, is_file in entries.items():
                if not n.endswith(".error") or n.startswith(".") or f"{n[:-6]}.json" in entries:
                    continue
                try:
                    if d.lstat(n).st_mtime >= self.cutoff:
                        continue
                except FileNotFoundError:
                    continue
                if self._remove(d, n, is_file):
                    self.report.dead_errors += 1
            if removed and not self.dry_run:
                d.fsync()
            self._drop_rows(removed)


def usable_index(layout: SpoolLayout, *, locking: bool) -> bool:
    """Before prune opens anything: False if ``index/`` is a link (prune then lists directories).

    Raises :class:`LinkedDir` (74) if ``run/`` is a link and the lock would be taken through it.
    """
    if locking:
        bad = linked_dir(layout, "run")
        if bad is not None:
            raise LinkedDir(bad)
    return linked_dir(layout, "index") is None
