"""What ``poetctl fsck --repair`` does to each problem (see :mod:`poetctl.backends.fs.fsck`).

Every action works by name relative to a :class:`~poetctl.backends.fs.safefs.SpoolDir`
(a directory of the spool opened without following links), so a directory
swapped for a symlink can never redirect a move or a deletion outside the
spool, and a link found inside a directory is moved or removed as a link,
never followed. Each factory returns a ``fix()`` callable that does the work
and returns what it did (or None if it could not).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

import orjson

from ...ids import EVENT_ID_RE
from .index import Index, Row, envelope_row, index_path
from .journal import Record, error_info, quarantine, save_merged, write_error
from .layout import SpoolLayout
from .paths import HEARTBEATS
from .reader import CorruptEvent
from .safefs import SpoolDir, open_dir

Fix = Callable[[], str | None]
MAX_READ = 16 * 1024 * 1024


def quarantine_fix(layout: SpoolLayout, d: SpoolDir, name: str, reason: str, detail: str) -> Fix:
    def fix() -> str | None:
        target = quarantine(layout, d.path / name, reason, detail, src=d)
        return None if target is None else f"quarantined to {target.relative_to(layout.root)}"

    return fix


def unlink_fix(d: SpoolDir, name: str) -> Fix:
    def fix() -> str | None:
        return "removed" if d.unlink(name) else "already gone"  # a link itself, never its target

    return fix


def requeue_fix(layout: SpoolLayout, owner: SpoolDir, name: str, rec: Record | None) -> Fix:
    """Put a stale in-flight event back in pending, its journal's verdict saved as a completion record."""

    def fix() -> str | None:
        eid = name[:-5]
        with SpoolDir(layout, "events/pending") as pending:
            if rec is not None and (rec.done or rec.failures) and EVENT_ID_RE.match(eid):
                with SpoolDir(layout, "events/records") as records:
                    save_merged(records, name, rec)
            try:
                owner.rename(name, pending, name)
            except FileExistsError:
                return None
            except FileNotFoundError:
                return "already gone"
            pending.fsync()
        return "requeued to pending" + (" (its finished handlers recorded)" if rec and rec.done else "")

    return fix


def remove_owner_dir(layout: SpoolLayout, inflight: SpoolDir, owner: SpoolDir, name: str, journal: str) -> None:
    """Remove a dead owner's emptied in-flight directory, its journal and its heartbeat."""
    if any(n != journal for n in owner.names()):
        return
    owner.unlink(journal)
    inflight.rmdir(name)
    hb = open_dir(layout, HEARTBEATS)
    if hb is not None:
        with hb:
            hb.unlink(f"{name}.json")


def write_error_fix(layout: SpoolLayout, eid: str, now: float) -> Fix:
    def fix() -> str | None:
        info = error_info(
            eid, "unknown", Record(), now, {"note": "recreated by poetctl fsck: the original record was missing"}
        )
        with SpoolDir(layout, "events/dead") as dead:
            write_error(dead, eid, info)
        return "wrote a minimal .error"

    return fix


def replace_error_fix(layout: SpoolLayout, dead: SpoolDir, eid: str, now: float) -> Fix:
    def fix() -> str | None:
        name = f"{eid}.error"
        done = quarantine_fix(layout, dead, name, "bad_error_record", "unreadable dead-letter error record")()
        if done is None:
            return None
        return f"{done}; {write_error_fix(layout, eid, now)()}"

    return fix


def rows_from(d: SpoolDir, state: str) -> Iterator[Row]:
    """Index rows of every readable event file in ``d`` (regular files only; damaged ones skipped)."""
    for n in d.names():
        if not n.endswith(".json") or n.startswith("."):
            continue
        try:
            e = orjson.loads(d.read(n, MAX_READ))
            yield envelope_row(e, state)
        except (OSError, CorruptEvent, ValueError, KeyError, TypeError, AttributeError):
            continue


def rebuild_index(layout: SpoolLayout, processed: SpoolDir, dead: SpoolDir) -> str:
    idx = Index(layout)
    try:
        n = 0
        for d, state in ((processed, "processed"), (dead, "dead")):
            batch: list[Row] = []
            for row in rows_from(d, state):
                batch.append(row)
                if len(batch) >= 10000:
                    idx.put(batch)
                    n += len(batch)
                    batch = []
            idx.put(batch)
            n += len(batch)
    finally:
        idx.close()
    return f"index built from the files ({n} rows)"


def rebuild_aside(layout: SpoolLayout, processed: SpoolDir, dead: SpoolDir, now: float) -> str:
    """Move a broken index aside (with its -wal/-shm) and build a new one."""
    path = index_path(layout)
    aside = path.with_name(f"events.sqlite.broken-{int(now)}")
    with SpoolDir(layout, "index") as idx_dir:
        idx_dir.rename(path.name, idx_dir, aside.name)
        for suffix in ("-wal", "-shm"):
            try:
                idx_dir.rename(path.name + suffix, idx_dir, aside.name + suffix)
            except FileNotFoundError:
                pass
    return rebuild_index(layout, processed, dead) + f"; the broken one is {aside.relative_to(layout.root)}"


def index_rows(layout: SpoolLayout) -> tuple[Index, dict[str, str]]:
    """The existing index and its (id, state) rows; sqlite3.Error if unreadable."""
    idx = Index(layout, create=False)
    try:
        return idx, dict(idx.db.execute("SELECT id, state FROM events"))
    except sqlite3.Error:
        idx.close()
        raise


def lexists(d: SpoolDir | None, name: str) -> bool:
    return d is not None and d.exists(name)
