"""``poetctl fsck``: check every file of a spool and, with ``repair``, fix what can be fixed.

Problem kinds, and what ``--repair`` does:

* ``linked_dir``: a spool directory (at any depth: ``events/tmp``,
  ``inflight/<owner>``, ``state/<fn>/history``...) is a symlink or not a
  directory -> nothing; fsck never reads, moves or deletes anything through
  it, and an operator fixes it by hand.
* ``corrupt_event``: bad JSON, checksum, envelope or schema, wrong name, too
  large -> quarantine (``corrupt/`` + ``.reason``).
* ``not_regular``: a link, directory or fifo where event files live ->
  quarantine (the link itself; its target is never touched).
* ``stray_file``: an unexpected name in an event directory -> quarantine.
* ``stale_inflight``: in flight with an owner that is gone -> back to pending
* ``filed_inflight``: in flight with an owner that is gone, and the same file is
  already in processed/ (a mover died between link and unlink) -> in-flight name removed
  (its journal becomes a completion record, as a daemon's recovery does).
* ``duplicate``: one id in two states -> nothing; an operator decides.
* ``dead_without_error``: ``dead/<id>.json`` without ``<id>.error`` -> write a
  minimal ``.error``.
* ``orphan_error``: ``dead/<id>.error`` without its event -> remove.
* ``bad_error_record``: an ``.error`` that is not a JSON object -> quarantine
  it and write a minimal one.
* ``orphan_record`` / ``bad_record``: a completion record of no pending event,
  or an unreadable one -> remove.
* ``orphan_tmp``: writer leftovers (``events/tmp``, hidden ``*.tmp``) older
  than ``tmp_age`` -> remove.
* ``stale_heartbeat``: ``run/daemons/<owner>.json`` of a gone owner -> remove.
* ``bad_feedback``: a feedback record that is not a JSON object -> quarantine.
* ``bad_state``: a state file that is not a JSON object (or a ``learning.json``
  whose sections are not objects, or an ``updated_at`` that is not a number)
  -> nothing; fixed by hand.
* ``unreadable``: a file fsck may not read (EACCES, EPERM) -> nothing: not the
  file's fault, so it is never quarantined or removed; fix its owner or mode.

Every JSON file is parsed as poetctl parses input (:func:`~poetctl.event.parse_json`):
nesting depth is checked before anything recursive touches it, and a duplicate key
or an integer beyond 64 bits makes the file damaged, like bad JSON.
* ``index_missing`` / ``index_unreadable``: handled events but no (usable)
  index -> build it from the files (a broken one is moved aside first).
* ``index_missing_row`` / ``index_orphan_row`` / ``index_wrong_state``: drift
  between rows and files -> add, delete or fix the row.

Every directory is opened without following links
(:class:`~poetctl.backends.fs.safefs.SpoolDir`) and every file is read, moved or
removed by name relative to it, so nothing outside the spool is ever touched.

Safe while daemons run: live owners' in-flight events are left alone, a file
that moves away while being checked is not a problem, and index drift is
confirmed by a second look before it is reported (the daemon writes index
rows a moment after the move).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ...errors import InvalidData, PoetError, SpoolIOError
from ...event import Event, parse_json
from ...ids import EVENT_ID_RE
from ...schemas import SchemaRegistry
from . import fsck_files as files
from . import fsck_inflight as inflight_check
from . import fsck_repair as fx
from .fsck_index import IndexCheck
from .fsck_report import FsckReport, Problem
from .layout import SpoolLayout
from .paths import BUCKET_LOCKS, HEARTBEATS, OWNER_LOCKS
from .reader import CorruptEvent, UnreadableEvent, decode_event
from .safefs import LinkedDir, SpoolDir

EVENT_STATES = ("pending", "processed", "dead")
DEFAULT_TMP_AGE = 3600.0
MAX_READ = 16 * 1024 * 1024
# Every fixed directory of the tree below the root, parents first (deeper ones are checked as they are met).
TREE = (
    "events",
    "events/tmp",
    "events/pending",
    "events/inflight",
    "events/processed",
    "events/dead",
    "events/corrupt",
    "events/records",
    "state",
    "feedback",
    "feedback/pending",
    "feedback/processed",
    "run",
    HEARTBEATS,
    OWNER_LOCKS,
    BUCKET_LOCKS,
    "index",
)


class Fsck:
    def __init__(
        self,
        layout: SpoolLayout,
        registry: SchemaRegistry | None,
        *,
        repair: bool = False,
        max_bytes: int = 1024 * 1024,
        lease_seconds: float = 30.0,
        tmp_age: float = DEFAULT_TMP_AGE,
        clock: Callable[[], float] = time.time,
        advance: Callable[[int], None] = lambda n: None,
        set_total: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.layout = layout
        self.registry = registry
        self.repair = repair
        self.max_bytes = max_bytes
        self.lease = lease_seconds
        self.tmp_age = tmp_age
        self.clock = clock
        self.advance = advance
        self.set_total = set_total
        self.report = FsckReport(str(layout.root), repair)
        # id -> state for every valid event seen (processed/dead feed the index comparison).
        self.where: dict[str, str] = {}
        self.live_inflight: dict[str, tuple[SpoolDir, str]] = {}
        self._dirs: dict[str, SpoolDir | None] = {}
        self.linked_dirs: set[str] = set()

    # -- helpers ------------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.layout.root))
        except ValueError:
            return str(path)

    def problem(self, kind: str, path: Path | str, detail: str, fix: Callable[[], str | None] | None = None) -> None:
        """Record a problem; with --repair run ``fix`` (it returns what it did, or None if it could not)."""
        p = Problem(kind, self.rel(path) if isinstance(path, Path) else path, detail)
        if self.repair and fix is not None:
            try:
                action = fix()
            except (OSError, PoetError, sqlite3.Error) as exc:
                action = None
                p.detail += f" (repair failed: {exc})"
            if action is not None:
                p.repaired, p.action = True, action
        self.report.problems.append(p)

    def count(self, key: str, n: int = 1) -> None:
        self.report.checked[key] = self.report.checked.get(key, 0) + n

    def linked(self, path: Path) -> None:
        """Report a directory that is a link (or not a directory) once; nothing works through it."""
        rel = self.rel(path)
        if rel in self.linked_dirs:
            return
        self.linked_dirs.add(rel)
        try:
            what = f"a symlink to {os.readlink(path)}"
        except OSError:
            what = "not a directory"
        self.problem(
            "linked_dir",
            rel,
            f"{path} is {what}; fsck reads, moves and removes nothing through it (fix it by hand)",
        )

    def dir(self, rel: str) -> SpoolDir | None:
        """The spool directory ``rel``, opened without following links (cached); None if absent or linked."""
        if rel in self._dirs:
            return self._dirs[rel]
        d: SpoolDir | None = None
        if not any(rel == x or rel.startswith(x + "/") for x in self.linked_dirs):
            try:
                d = SpoolDir(self.layout, rel)
            except FileNotFoundError:
                d = None
            except LinkedDir as exc:
                self.linked(exc.path)
            except SpoolIOError as exc:
                self.problem("unreadable_dir", rel, exc.message)
        self._dirs[rel] = d
        return d

    def child(self, parent: SpoolDir, name: str) -> SpoolDir | None:
        """A subdirectory of ``parent`` without following a link (reported); None if absent."""
        try:
            d = parent.child(name)
        except FileNotFoundError:
            return None
        except LinkedDir as exc:
            self.linked(exc.path)
            return None
        except SpoolIOError as exc:
            self.problem("unreadable_dir", parent.path / name, exc.message)
            return None
        self._dirs[d.rel] = d
        return d

    def close(self) -> None:
        for d in self._dirs.values():
            if d is not None:
                d.close()
        self._dirs.clear()

    @staticmethod
    def entries(d: SpoolDir | None) -> list[Any]:
        if d is None:
            return []
        try:
            return list(d.entries())
        except FileNotFoundError:
            return []

    def load(self, d: SpoolDir, name: str, registry: SchemaRegistry | None) -> Event:
        """Read and verify one event file by name (never through a link)."""
        where = str(d.path / name)
        expected = name[:-5] if name.endswith(".json") else None
        if expected is None or not EVENT_ID_RE.match(expected):
            raise CorruptEvent("bad_name", "expected <event id>.json", where=where)
        return decode_event(d.read(name, self.max_bytes), registry, where=where, expected_id=expected)

    def unreadable(self, path: Path, exc: CorruptEvent) -> None:
        """A file fsck may not read: reported and left in place, even with --repair (its mode is not its content)."""
        self.problem("unreadable", path, f"{exc.detail}; left in place (fix its owner or mode)")

    @staticmethod
    def json_object(
        d: SpoolDir, name: str, parse: Callable[[bytes], Any] = parse_json, max_bytes: int = MAX_READ
    ) -> tuple[Any, str | None]:
        """``name`` parsed strictly (``parse`` raises InvalidData), and what makes it not a usable JSON object.

        Raises FileNotFoundError (moved away) and :class:`UnreadableEvent` (for :meth:`unreadable`).
        """
        try:
            doc = parse(d.read(name, max_bytes))
        except UnreadableEvent:
            raise
        except CorruptEvent as exc:
            return None, f"{exc.reason}: {exc.detail}"
        except InvalidData as exc:
            return None, exc.message
        return doc, None if isinstance(doc, dict) else "not a JSON object"

    def quarantine(self, d: SpoolDir, name: str, reason: str, detail: str) -> fx.Fix:
        return fx.quarantine_fix(self.layout, d, name, reason, detail)

    # -- run --------------------------------------------------------------------------------
    def run(self) -> FsckReport:
        t0 = time.monotonic()
        try:
            self._run()
        finally:
            self.close()
        self.report.seconds = time.monotonic() - t0
        return self.report

    def _run(self) -> None:
        for rel in TREE:
            self.dir(rel)  # reports every linked directory first, before anything is read
        listings = {s: self.entries(self.dir(f"events/{s}")) for s in EVENT_STATES}
        inflight = inflight_check.owner_dirs(self)
        self.set_total(sum(len(v) for v in listings.values()) + sum(len(v) for _, v in inflight.values()))
        inflight_check.check_inflight(self, inflight)
        if self.repair:
            listings["pending"] = self.entries(self.dir("events/pending"))  # requeued events are checked there
        for state in EVENT_STATES:
            d = self.dir(f"events/{state}")
            if d is not None:
                self.check_events(state, d, listings[state])
        self.check_duplicates()
        dead = self.dir("events/dead")
        if dead is not None:
            self.check_dead_errors(dead, listings["dead"])
        files.check_records(self)
        files.check_tmp(self)
        files.check_feedback(self)
        files.check_state(self)
        files.check_heartbeats(self)
        self.check_index()

    def checksum(self, d: SpoolDir, name: str) -> str | None:
        try:
            value = orjson.loads(d.read(name, self.max_bytes)).get("checksum")
        except (OSError, CorruptEvent, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    # -- event files ------------------------------------------------------------------------------
    def check_events(self, state: str, d: SpoolDir, entries: list[Any]) -> None:
        n = 0
        for e in entries:
            self.advance(1)
            name = e.name
            p = d.path / name
            if state == "dead" and name.endswith(".error") and not name.startswith("."):
                continue  # checked with the dead letters
            if name.startswith("."):
                self._maybe_tmp(d, name)
                continue
            try:
                is_file = e.is_file(follow_symlinks=False)
            except OSError:
                continue
            if not is_file:
                if not d.exists(name):
                    continue
                self.problem(
                    "not_regular",
                    p,
                    "not a regular file (links are never followed)",
                    self.quarantine(d, name, "not_regular", "not a regular file"),
                )
                continue
            if not name.endswith(".json"):
                self.problem(
                    "stray_file",
                    p,
                    f"unexpected file in events/{state}",
                    self.quarantine(d, name, "bad_name", f"unexpected file in events/{state}"),
                )
                continue
            try:
                ev = self.load(d, name, self.registry)
            except FileNotFoundError:
                continue  # moved on meanwhile (a daemon at work): not a problem
            except UnreadableEvent as exc:
                self.unreadable(p, exc)
                continue
            except CorruptEvent as exc:
                self.problem(
                    "corrupt_event", p, f"{exc.reason}: {exc.detail}", self.quarantine(d, name, exc.reason, exc.detail)
                )
                continue
            n += 1
            prev = self.where.get(ev.id)
            self.where[ev.id] = state if prev is None else f"{prev},{state}"
        self.count(state, n)

    def _maybe_tmp(self, d: SpoolDir, name: str) -> None:
        """Hidden ``.*.tmp`` files are write_atomic's; old ones are leftovers of a crash."""
        if not name.endswith(".tmp"):
            return
        try:
            st = d.lstat(name)
        except FileNotFoundError:
            return
        if st.st_mtime < self.clock() - self.tmp_age:
            self.problem(
                "orphan_tmp", d.path / name, f"writer leftover, {self._age(st.st_mtime)} old", fx.unlink_fix(d, name)
            )

    def _age(self, t: float) -> str:
        s = max(0.0, self.clock() - t)
        return f"{s / 86400:.1f}d" if s >= 86400 else f"{s / 3600:.1f}h" if s >= 3600 else f"{s:.0f}s"

    def check_duplicates(self) -> None:
        for eid, where in list(self.where.items()):
            if "," in where:
                self.problem("duplicate", f"events/*/{eid}.json", f"the same id is in {where.replace(',', ' and ')}")
        processed = self.dir("events/processed")
        for eid, (d, name) in self.live_inflight.items():
            w = self.where.get(eid)
            if w == "processed" and (
                not d.exists(name) or (processed is not None and d.same_file(name, processed, name))
            ):
                continue  # a live daemon filed it between the two listings (or is filing it now)
            if w is not None and w != "pending":
                self.problem("duplicate", f"events/*/{eid}.json", f"in flight and in {w}")

    # -- dead letters ----------------------------------------------------------------------------
    def check_dead_errors(self, dead: SpoolDir, entries: list[Any]) -> None:
        names = {e.name for e in entries}
        for e in entries:
            n = e.name
            if not n.endswith(".error") or n.startswith("."):
                continue
            p = dead.path / n
            eid = n[:-6]
            if f"{eid}.json" not in names:
                if not dead.exists(f"{eid}.json"):
                    self.problem("orphan_error", p, "error record of no dead event", fx.unlink_fix(dead, n))
                continue
            try:
                problem = self.json_object(dead, n)[1]
            except FileNotFoundError:
                continue
            except UnreadableEvent as exc:
                self.unreadable(p, exc)
                continue
            if problem is not None:
                self.problem(
                    "bad_error_record",
                    p,
                    f"not a JSON object (or not a regular file): {problem}",
                    fx.replace_error_fix(self.layout, dead, eid, self.clock()),
                )
        for eid, where in self.where.items():
            if where == "dead" and f"{eid}.error" not in names and not dead.exists(f"{eid}.error"):
                self.problem(
                    "dead_without_error",
                    dead.path / f"{eid}.json",
                    "no .error record beside it",
                    fx.write_error_fix(self.layout, eid, self.clock()),
                )

    def check_index(self) -> None:
        IndexCheck(self).run()
