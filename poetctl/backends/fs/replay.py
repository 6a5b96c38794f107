"""Moving handled events (processed/ or dead/) back to pending so the handlers run again.

Used by ``poetctl replay`` and ``poetctl dead retry``. Ids are kept; the
event's ``metadata.replayed`` records ``{"at", "count", "from"}`` (plus, from
dead/, a summary of the last error) and the checksum is recomputed. The
completion record (``events/records/<id>.json``) is dropped so every handler
runs again, and a retried dead letter starts with fresh attempts - except with
``keep_done`` (``poetctl dead retry``'s default): a dead letter's record then
keeps the handlers its ``.error`` lists as finished (``handlers_done``), so
only the others run again (a Slack message is not posted twice).

Ordering (why an event is always in exactly one state, even across a crash)
--------------------------------------------------------------------------

The mover behaves like a daemon: it owns ``events/inflight/<owner>/``, named
like a daemon's (``<host>.<pid>.<start ticks>``), so daemons treat it as
the directory of a live owner while this process runs and *recover it to
pending* if this process dies. Per batch:

1. drop the completion records, before the move: a record without its event
   is inert, while one left beside an event recovered after a crash would
   make the handlers it lists be skipped (with ``keep_done``, a record of
   just the finished handlers is written instead: skipping them is the point);
2. ``rename(processed/<id>.json -> inflight/<owner>/<id>.json)``: one atomic
   step, so the event is in exactly one directory (a daemon never claims from
   inflight, and nobody else writes there); fsync both directories;
3. delete the index rows (in-flight events are not indexed; doing it before
   step 5 means a daemon that re-handles the event at once can only *add* its
   new row after ours is gone, never lose it);
4. rewrite the file in place with the new metadata (tmp in events/tmp, one
   group sync, then ``renameat2(RENAME_EXCHANGE)`` with the in-flight name,
   which - unlike a rename - cannot re-create a file a daemon recovered
   meanwhile; fsync);
5. ``renameat2(inflight/<owner>/<id>.json -> pending/<id>.json,
   RENAME_NOREPLACE)``: atomic again and never replaces a pending file (if
   one exists the id is already queued: ours goes back where it came from);
   fsync both directories;
6. from dead/: remove ``dead/<id>.error`` (its summary now travels in
   ``metadata.replayed.error``).

A crash after 2 leaves the event in a dead owner's in-flight directory; the
next daemon start or rescan (or ``poetctl fsck --repair``) returns it to
pending, so it is still handled again - only the ``replayed`` mark may be
missing. A crash after 5 can leave a ``dead/<id>.error`` without its event,
which ``fsck`` reports and ``--repair`` removes. There is never a moment with
zero copies or with two live copies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ...errors import PoetError, SpoolIOError
from ...event import Event, parse_json
from ...transport import Record
from .index import Index, row_of
from .layout import DIR_MODE, FILE_MODE, SpoolLayout
from .owner import current_owner
from .query import Found
from .reader import CorruptEvent, decode_event
from .safefs import SpoolDir, refuse_linked, rename_noreplace_at, replace_existing_at
from .writer import group_sync

BATCH = 500
ERROR_SUMMARY_CHARS = 2000


@dataclass(slots=True)
class Outcome:
    moved: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def error_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What of a ``dead/<id>.error`` record is kept in the event when it leaves dead/."""
    err = info.get("error")
    if isinstance(err, str) and len(err) > ERROR_SUMMARY_CHARS:
        err = err[:ERROR_SUMMARY_CHARS] + "..."
    return {
        k: v
        for k, v in (
            ("reason", info.get("reason")),
            ("error", err),
            ("handler", info.get("handler")),
            ("attempts", info.get("attempts")),
            ("dead_at", info.get("dead_at")),
        )
        if v is not None
    }


def read_error(layout: SpoolLayout, event_id: str, dead: SpoolDir | None = None) -> dict[str, Any] | None:
    """``dead/<id>.error`` parsed, or None if absent, unreadable or damaged (never follows a link, nor a linked dead/).

    Damaged: what :func:`~poetctl.event.parse_json` refuses (too deep to print, duplicate keys...); fsck reports it.
    """
    try:
        if dead is not None:
            data = dead.read(f"{event_id}.error", 16 * 1024 * 1024)
        else:
            with SpoolDir(layout, "events/dead") as d:
                data = d.read(f"{event_id}.error", 16 * 1024 * 1024)
        d_: Any = parse_json(data)
    except (FileNotFoundError, PoetError, CorruptEvent):
        return None
    return d_ if isinstance(d_, dict) else None


def needed_dirs(source: str) -> tuple[str, ...]:
    """The spool directories a requeue from ``source`` reads or writes (none of them may be a link)."""
    return (
        "events",
        f"events/{source}",
        "events/pending",
        "events/inflight",
        "events/records",
        "events/tmp",
        "events/dead",
        "index",
    )


def refuse_links(layout: SpoolLayout, source: str) -> None:
    """Raise :class:`~.safefs.LinkedDir` (74) before anything is read if a needed directory is a link."""
    refuse_linked(layout, needed_dirs(source))


def mark_replayed(ev: Event, source: str, at: float, error: dict[str, Any] | None = None) -> Event:
    """Set ``metadata.replayed`` (count + 1) and reseal."""
    prev = ev.metadata.get("replayed")
    count = prev.get("count", 0) if isinstance(prev, dict) else 0
    mark: dict[str, Any] = {"at": round(at, 6), "count": (count if isinstance(count, int) else 0) + 1, "from": source}
    if error:
        mark["error"] = error
    ev.metadata = {**ev.metadata, "replayed": mark}
    return ev.seal()


class Requeuer:
    """Moves events from ``source`` (processed or dead) to pending; see the module docstring.

    Every directory is opened without following links (:class:`SpoolDir`)
    when the requeuer is created, and every move, read and write is by name
    relative to those descriptors: a directory that is (or becomes) a link
    raises :class:`~poetctl.backends.fs.safefs.LinkedDir` (74) and nothing is touched
    through it.
    """

    def __init__(
        self,
        layout: SpoolLayout,
        source: str,
        *,
        index: Index | None,
        max_bytes: int,
        warn: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        keep_done: bool = False,
    ) -> None:
        self.layout = layout
        self.source = source
        self.keep_done = keep_done and source == "dead"
        self.index = index
        self.max_bytes = max_bytes
        self.warn = warn
        self.clock = clock
        self.owner = current_owner()
        refuse_links(layout, source)
        self._dirs: list[SpoolDir] = []
        try:
            self.src = self._open(f"events/{source}")
            self.pending = self._open("events/pending")
            self.inflight = self._open("events/inflight")
            self.records = self._open("events/records")
            self.tmp = self._open("events/tmp")
            self.dead = self._open("events/dead")
        except BaseException:
            self._close_dirs()
            raise
        self.own_dir: SpoolDir | None = None

    def _open(self, rel: str) -> SpoolDir:
        try:
            d = SpoolDir(self.layout, rel)
        except FileNotFoundError:
            raise SpoolIOError(f"{self.layout.root / rel} is missing; run 'poetctl init' to repair the tree") from None
        self._dirs.append(d)
        return d

    @property
    def own(self) -> Path:
        return self.layout.inflight / self.owner

    def __enter__(self) -> Requeuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_dirs(self) -> None:
        for d in self._dirs:
            d.close()
        self._dirs = []

    def close(self) -> None:
        if self.own_dir is not None:
            self.own_dir.close()
            self.own_dir = None
            self.inflight.rmdir(self.owner)  # not empty: something could not be put anywhere; a daemon recovers it
        self._close_dirs()

    def _ensure_own(self) -> SpoolDir:
        if self.own_dir is None:
            try:
                os.mkdir(self.owner, DIR_MODE, dir_fd=self.inflight.fd)
            except FileExistsError:
                pass
            self.own_dir = self.inflight.child(self.owner)
        return self.own_dir

    def requeue(self, found: list[Found]) -> Outcome:
        """Move every event of ``found`` (read from ``source``) to pending. Returns what moved."""
        out = Outcome()
        for start in range(0, len(found), BATCH):
            self._batch(found[start : start + BATCH], out)
        return out

    def _batch(self, batch: list[Found], out: Outcome) -> None:
        own = self._ensure_own()
        # 1. Completion records are reset: every handler runs again (with keep_done: those not finished).
        for f in batch:
            done = self._handlers_done(f.id) if self.keep_done else []
            if done:
                self.records.write_atomic(f"{f.id}.json", orjson.dumps(Record(done=set(done)).to_dict()))
            else:
                self.records.unlink(f"{f.id}.json")
        # 2. Take the events out of their state into our own in-flight directory.
        taken: list[Found] = []
        for f in batch:
            name = f"{f.id}.json"
            if self.src.is_regular(name) is False:
                out.skipped.append((f.id, f"not a regular file in {self.source}/ (a link?); left alone"))
                self._unkeep(f.id)
                continue
            try:
                self.src.rename(name, own, name, replace=True)
            except FileNotFoundError:
                out.skipped.append((f.id, f"it left {self.source}/ meanwhile"))
                self._unkeep(f.id)
                continue
            except OSError as exc:
                raise SpoolIOError(f"cannot move {f.path} to {self.own}: {exc.strerror}") from None
            taken.append(f)
        if not taken:
            return
        own.fsync()
        self.src.fsync()
        # 3. In flight is not indexed.
        if self.index is not None:
            self.index.delete([f.id for f in taken])
        # 4. Rewrite with the replay mark.
        now = self.clock()
        made: list[tuple[str, str, int]] = []
        ready: list[str] = []
        events: dict[str, Event] = {}
        try:
            for f in taken:
                name = f"{f.id}.json"
                try:
                    data = own.read(name, self.max_bytes)
                    ev = decode_event(data, None, where=str(self.own / name), expected_id=f.id)
                except CorruptEvent as exc:
                    self._put_back(f.id, f"changed while being replayed: {exc}", out, None)
                    continue
                err = error_summary(read_error(self.layout, f.id, self.dead) or {}) if self.source == "dead" else None
                events[f.id] = ev
                data = mark_replayed(ev, self.source, now, err).to_json() + b"\n"
                if len(data) > self.max_bytes:
                    # Unmarked rather than oversized: a daemon would quarantine an oversized file.
                    self.warn(f"{f.id}: the replay mark would exceed max_event_bytes; replaying it unmarked")
                    ready.append(f.id)
                    continue
                tmp, fd = self._write_tmp(f.id, data)
                made.append((f.id, tmp, fd))
            group_sync(self.layout.root, [fd for _, _, fd in made])
        except BaseException:
            for _, tmp, fd in made:
                os.close(fd)
                self.tmp.unlink(tmp)
            raise
        for eid, tmp, fd in made:
            os.close(fd)
            try:
                # Only over the file we hold: if a daemon recovered it meanwhile (it judges owners on other
                # hosts by heartbeats, and we write none), it is pending again and must not be duplicated.
                replace_existing_at(self.tmp.fd, tmp, own.fd, f"{eid}.json")
            except FileNotFoundError:
                self.tmp.unlink(tmp)
                out.skipped.append((eid, "a daemon took it back to pending meanwhile (handled again, unmarked)"))
                continue
            except OSError as exc:
                self.tmp.unlink(tmp)
                raise SpoolIOError(f"cannot rewrite {self.own / eid}.json: {exc.strerror}") from None
            ready.append(eid)
        own.fsync()
        # 5. Into pending, never replacing an event already queued there.
        moved: list[str] = []
        for eid in ready:
            try:
                rename_noreplace_at(own.fd, f"{eid}.json", self.pending.fd, f"{eid}.json")
            except FileExistsError:
                self._put_back(eid, "it is already pending", out, events.get(eid))
                continue
            except FileNotFoundError:
                out.skipped.append((eid, "a daemon took it back to pending meanwhile (handled again)"))
                continue
            except OSError as exc:
                raise SpoolIOError(f"cannot move {eid} into {self.layout.pending}: {exc.strerror}") from None
            moved.append(eid)
        self.pending.fsync()
        own.fsync()
        # 6. The dead letter's error record has been summarised into the event.
        if self.source == "dead" and moved:
            for eid in moved:
                self.dead.unlink_regular(f"{eid}.error")
            self.dead.fsync()
        out.moved.extend(moved)

    def _unkeep(self, eid: str) -> None:
        """An event that does not reach pending leaves no record of ours behind (fsck: orphan record)."""
        if self.keep_done:
            self.records.unlink(f"{eid}.json")

    def _handlers_done(self, eid: str) -> list[str]:
        """The handlers a dead letter's ``.error`` lists as finished (none if it is missing or damaged)."""
        done = (read_error(self.layout, eid, self.dead) or {}).get("handlers_done")
        return [h for h in done if isinstance(h, str) and h] if isinstance(done, list) else []

    def _write_tmp(self, eid: str, data: bytes) -> tuple[str, int]:
        """A new file in events/tmp (by name relative to its descriptor) holding ``data``; name and open fd."""
        name = f".{eid}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, FILE_MODE, dir_fd=self.tmp.fd)
        except OSError as exc:
            raise SpoolIOError(f"cannot create {self.tmp.path / name}: {exc.strerror}") from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            os.close(fd)
            self.tmp.unlink(name)
            raise SpoolIOError(f"cannot write {self.tmp.path / name}: {exc.strerror}") from None
        return name, fd

    def _put_back(self, eid: str, why: str, out: Outcome, ev: Event | None) -> None:
        """Return an event we took to where it came from (never replacing anything)."""
        self._unkeep(eid)
        own = self._ensure_own()
        try:
            own.rename(f"{eid}.json", self.src, f"{eid}.json")
        except FileExistsError:
            # Its name in source/ was taken meanwhile: leave it in flight; when this process
            # exits, a daemon (or fsck --repair) returns it to pending. Nothing is lost.
            why += f"; left in {self.own} for recovery"
        else:
            if self.index is not None and ev is not None:
                self.index.put([row_of(ev, self.source)])
        self.src.fsync()
        out.skipped.append((eid, why))
