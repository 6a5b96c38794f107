"""``poetctl fsck``: check every file of a spool and, with ``repair``, fix what can be fixed.

Problem kinds, and what ``--repair`` does:

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
* ``bad_state``: a state file that is not a JSON object -> nothing; fixed by
  hand.
* ``index_missing`` / ``index_unreadable``: handled events but no (usable)
  index -> build it from the files (a broken one is moved aside first).
* ``index_missing_row`` / ``index_orphan_row`` / ``index_wrong_state``: drift
  between rows and files -> add, delete or fix the row.

Safe while daemons run: live owners' in-flight events are left alone, a file
that moves away while being checked is not a problem, and index drift is
confirmed by a second look before it is reported (the daemon writes index
rows a moment after the move).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..daemon.owner import OWNER_RE, owner_alive
from ..daemon.records import (
    JOURNAL,
    Record,
    RecordStore,
    journal_record,
    quarantine,
    read_journal,
    stated_checksum,
)
from ..errors import PoetError
from ..ids import EVENT_ID_RE
from ..schemas import SchemaRegistry
from ..spool.index import Index, index_path, row_of, rows_from_files
from ..spool.layout import SpoolLayout, fsync_dir, same_file
from ..spool.reader import CorruptEvent, load_event, read_bytes
from ..spool.writer import write_atomic
from .safefs import rename_noreplace

EVENT_STATES = ("pending", "processed", "dead")
DEFAULT_TMP_AGE = 3600.0
DRIFT_RECHECK_DELAY = 0.5
MAX_READ = 16 * 1024 * 1024


@dataclass(slots=True)
class Problem:
    kind: str
    path: str
    detail: str
    repaired: bool = False
    action: str | None = None


@dataclass(slots=True)
class FsckReport:
    spool: str
    repair: bool
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unrepaired(self) -> int:
        return sum(1 for p in self.problems if not p.repaired)

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "spool": self.spool,
            "repair": self.repair,
            "clean": self.unrepaired == 0,
            "checked": self.checked,
            "summary": self.summary(),
            "problems": [asdict(p) for p in self.problems],
            "repaired": sum(1 for p in self.problems if p.repaired),
            "unrepaired": self.unrepaired,
            "seconds": round(self.seconds, 3),
        }


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
        self.live_inflight: dict[str, Path] = {}

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

    def _quarantine(self, path: Path, reason: str, detail: str) -> Callable[[], str | None]:
        def fix() -> str | None:
            target = quarantine(self.layout, path, reason, detail)
            return None if target is None else f"quarantined to {self.rel(target)}"

        return fix

    def _unlink(self, path: Path) -> Callable[[], str | None]:
        def fix() -> str | None:
            try:
                os.unlink(path)  # removes a link itself, never its target
            except FileNotFoundError:
                return "already gone"
            return "removed"

        return fix

    @staticmethod
    def _names(d: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(d) as it:
                return list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []

    # -- run --------------------------------------------------------------------------------
    def run(self) -> FsckReport:
        t0 = time.monotonic()
        lay = self.layout
        for d in lay.dirs():
            if d.is_symlink() or (os.path.lexists(d) and not d.is_dir()):
                self.problem(
                    "not_regular",
                    d,
                    "a spool directory is a link or not a directory; fsck does not work through it (fix it by hand)",
                )
        listings = {s: self._names(getattr(lay, s)) for s in EVENT_STATES}
        inflight = {d: self._names(d) for d in lay.inflight_dirs()}
        self.set_total(sum(len(v) for v in listings.values()) + sum(len(v) for v in inflight.values()))
        self.check_inflight(inflight)
        if self.repair:
            listings["pending"] = self._names(lay.pending)  # requeued events are checked there
        for state in EVENT_STATES:
            self.check_events(state, listings[state])
        self.check_duplicates()
        self.check_dead_errors(listings["dead"])
        self.check_records()
        self.check_tmp()
        self.check_feedback()
        self.check_state()
        self.check_heartbeats()
        self.check_index()
        self.report.seconds = time.monotonic() - t0
        return self.report

    # -- in flight ------------------------------------------------------------------------------
    def check_inflight(self, dirs: dict[Path, list[os.DirEntry[str]]]) -> None:
        lay = self.layout
        for e in self._names(lay.inflight):
            if e.name.startswith("."):
                continue  # hidden files (.gitkeep) are not the daemon's, as in pending/
            if not e.is_dir(follow_symlinks=False):
                p = Path(e.path)
                self.problem(
                    "stray_file",
                    p,
                    "expected only owner directories in events/inflight",
                    self._quarantine(p, "stray_file", "not an owner directory in events/inflight"),
                )
        hb = lay.run / "daemons"
        for d, entries in dirs.items():
            alive = OWNER_RE.match(d.name) is not None and owner_alive(d.name, hb, self.lease)
            names = [e for e in entries if e.name != JOURNAL]
            self.count("inflight", sum(1 for e in names if e.name.endswith(".json")))
            if alive:
                self.live_inflight.update((e.name[:-5], Path(e.path)) for e in names if e.name.endswith(".json"))
                self.advance(len(entries))
                continue
            journal = read_journal(d / JOURNAL)
            for e in names:
                p = Path(e.path)
                if not e.name.endswith(".json") or e.name.startswith("."):
                    self.problem(
                        "stray_file",
                        p,
                        "unexpected file in an in-flight directory",
                        self._quarantine(p, "bad_name", "unexpected file in an in-flight directory"),
                    )
                    continue
                if same_file(p, lay.processed / e.name):
                    # A completion mover linked it into processed/ and died before the unlink.
                    self.problem(
                        "filed_inflight",
                        p,
                        f"owner {d.name} is gone; the event is already in processed/ (same file)",
                        self._unlink(p),
                    )
                    continue
                self.problem(
                    "stale_inflight",
                    p,
                    f"owner {d.name} is gone; the event waits in flight forever",
                    self._requeue(p, journal_record(journal, e.name[:-5], stated_checksum(p))),
                )
            self.advance(len(entries))
            if self.repair:
                self._remove_owner_dir(d)

    def _requeue(self, path: Path, rec: Record | None) -> Callable[[], str | None]:
        def fix() -> str | None:
            eid = path.name[:-5]
            if rec is not None and (rec.done or rec.failures) and EVENT_ID_RE.match(eid):
                existing = self.layout.records / path.name
                if existing.exists():
                    try:
                        old = Record.from_json(existing.read_bytes())
                        rec.done |= old.done
                        rec.failures = old.failures + rec.failures
                    except (OSError, ValueError):
                        pass
                RecordStore(self.layout).save(eid, rec)
            try:
                rename_noreplace(path, self.layout.pending / path.name)
            except FileExistsError:
                return None
            except FileNotFoundError:
                return "already gone"
            fsync_dir(self.layout.pending)
            return "requeued to pending" + (" (its finished handlers recorded)" if rec and rec.done else "")

        return fix

    def _remove_owner_dir(self, d: Path) -> None:
        if any(e.name != JOURNAL for e in self._names(d)):
            return
        for p in (d / JOURNAL, self.layout.run / "daemons" / f"{d.name}.json"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(d)
        except OSError:
            pass

    # -- event files ------------------------------------------------------------------------------
    def check_events(self, state: str, entries: list[os.DirEntry[str]]) -> None:
        n = 0
        for e in entries:
            self.advance(1)
            name = e.name
            p = Path(e.path)
            if state == "dead" and name.endswith(".error") and not name.startswith("."):
                continue  # checked with the dead letters
            if name.startswith("."):
                self._maybe_tmp(p)
                continue
            try:
                is_file = e.is_file(follow_symlinks=False)
            except OSError:
                continue
            if not is_file:
                if not os.path.lexists(p):
                    continue
                self.problem(
                    "not_regular",
                    p,
                    "not a regular file (links are never followed)",
                    self._quarantine(p, "not_regular", "not a regular file"),
                )
                continue
            if not name.endswith(".json"):
                self.problem(
                    "stray_file",
                    p,
                    f"unexpected file in events/{state}",
                    self._quarantine(p, "bad_name", f"unexpected file in events/{state}"),
                )
                continue
            try:
                ev = load_event(p, self.registry, self.max_bytes)
            except FileNotFoundError:
                continue  # moved on meanwhile (a daemon at work): not a problem
            except CorruptEvent as exc:
                self.problem(
                    "corrupt_event", p, f"{exc.reason}: {exc.detail}", self._quarantine(p, exc.reason, exc.detail)
                )
                continue
            n += 1
            prev = self.where.get(ev.id)
            self.where[ev.id] = state if prev is None else f"{prev},{state}"
        self.count(state, n)

    def _maybe_tmp(self, p: Path) -> None:
        """Hidden ``.*.tmp`` files are write_atomic's; old ones are leftovers of a crash."""
        if not p.name.endswith(".tmp"):
            return
        try:
            st = p.lstat()
        except FileNotFoundError:
            return
        if st.st_mtime < self.clock() - self.tmp_age:
            self.problem("orphan_tmp", p, f"writer leftover, {self._age(st.st_mtime)} old", self._unlink(p))

    def _age(self, t: float) -> str:
        s = max(0.0, self.clock() - t)
        return f"{s / 86400:.1f}d" if s >= 86400 else f"{s / 3600:.1f}h" if s >= 3600 else f"{s:.0f}s"

    def check_duplicates(self) -> None:
        for eid, where in list(self.where.items()):
            if "," in where:
                self.problem("duplicate", f"events/*/{eid}.json", f"the same id is in {where.replace(',', ' and ')}")
        for eid, path in self.live_inflight.items():
            w = self.where.get(eid)
            if w == "processed" and (not os.path.lexists(path) or same_file(path, self.layout.processed / path.name)):
                continue  # a live daemon filed it between the two listings (or is filing it now)
            if w is not None and w != "pending":
                self.problem("duplicate", f"events/*/{eid}.json", f"in flight and in {w}")

    # -- dead letters ----------------------------------------------------------------------------
    def check_dead_errors(self, entries: list[os.DirEntry[str]]) -> None:
        names = {e.name for e in entries}
        dead = self.layout.dead
        for e in entries:
            n = e.name
            if not n.endswith(".error") or n.startswith("."):
                continue
            p = Path(e.path)
            eid = n[:-6]
            if f"{eid}.json" not in names:
                if not os.path.lexists(dead / f"{eid}.json"):
                    self.problem("orphan_error", p, "error record of no dead event", self._unlink(p))
                continue
            try:
                info = orjson.loads(read_bytes(p, MAX_READ))
                ok = isinstance(info, dict)
            except FileNotFoundError:
                continue
            except (CorruptEvent, orjson.JSONDecodeError):
                ok = False
            if not ok:
                self.problem(
                    "bad_error_record", p, "not a JSON object (or not a regular file)", self._replace_error(p, eid)
                )
        for eid, where in self.where.items():
            if where == "dead" and f"{eid}.error" not in names and not os.path.lexists(dead / f"{eid}.error"):
                self.problem(
                    "dead_without_error", dead / f"{eid}.json", "no .error record beside it", self._write_error(eid)
                )

    def _replace_error(self, p: Path, eid: str) -> Callable[[], str | None]:
        def fix() -> str | None:
            done = self._quarantine(p, "bad_error_record", "unreadable dead-letter error record")()
            if done is None:
                return None
            return f"{done}; {self._write_error(eid)()}"

        return fix

    def _write_error(self, eid: str) -> Callable[[], str | None]:
        def fix() -> str | None:
            info = {
                "id": eid,
                "reason": "unknown",
                "dead_at": self.clock(),
                "attempts": 0,
                "error": None,
                "history": [],
                "note": "recreated by poetctl fsck: the original record was missing",
            }
            write_atomic(self.layout.dead, f"{eid}.error", orjson.dumps(info, option=orjson.OPT_INDENT_2))
            return "wrote a minimal .error"

        return fix

    # -- records, tmp, feedback, state, heartbeats --------------------------------------------------
    def check_records(self) -> None:
        for e in self._names(self.layout.records):
            p = Path(e.path)
            if e.name.startswith("."):
                self._maybe_tmp(p)
                continue
            self.count("records")
            eid = e.name[:-5] if e.name.endswith(".json") else None
            try:
                Record.from_json(read_bytes(p, MAX_READ))
            except FileNotFoundError:
                continue
            except (CorruptEvent, ValueError, TypeError, KeyError):
                self.problem("bad_record", p, "unreadable completion record", self._unlink(p))
                continue
            if eid is None or not (
                self.where.get(eid) == "pending"
                or eid in self.live_inflight
                or os.path.lexists(self.layout.pending / e.name)
            ):
                self.problem("orphan_record", p, "completion record of no pending event", self._unlink(p))

    def check_tmp(self) -> None:
        limit = self.clock() - self.tmp_age
        for e in self._names(self.layout.tmp):
            if e.name == ".gitkeep":
                continue  # the placeholder that keeps an empty directory in git, not a writer's file
            p = Path(e.path)
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            self.count("tmp")
            if not stat.S_ISREG(st.st_mode):
                self.problem(
                    "not_regular",
                    p,
                    "not a regular file in events/tmp",
                    self._quarantine(p, "not_regular", "not a regular file in events/tmp"),
                )
            elif st.st_mtime < limit:
                self.problem("orphan_tmp", p, f"writer leftover, {self._age(st.st_mtime)} old", self._unlink(p))
        for d in (
            self.layout.corrupt,
            self.layout.run / "daemons",
            self.layout.feedback_pending,
            self.layout.feedback_processed,
        ):
            for e in self._names(d):
                if e.name.startswith("."):
                    self._maybe_tmp(Path(e.path))

    def check_feedback(self) -> None:
        for d in (self.layout.feedback_pending, self.layout.feedback_processed):
            for e in self._names(d):
                if e.name.startswith("."):
                    continue
                p = Path(e.path)
                self.count("feedback")
                try:
                    ok = isinstance(orjson.loads(read_bytes(p, MAX_READ)), dict)
                except FileNotFoundError:
                    continue
                except (CorruptEvent, orjson.JSONDecodeError):
                    ok = False
                if not ok or not e.name.endswith(".json"):
                    self.problem(
                        "bad_feedback",
                        p,
                        "not a JSON object in a .json regular file",
                        self._quarantine(p, "bad_feedback", "unreadable feedback record"),
                    )

    def check_state(self) -> None:
        for p in self._walk_json(self.layout.state):
            self.count("state")
            try:
                ok = isinstance(orjson.loads(read_bytes(p, MAX_READ)), dict)
            except FileNotFoundError:
                continue
            except (CorruptEvent, orjson.JSONDecodeError):
                ok = False
            if not ok:
                self.problem("bad_state", p, "not a JSON object (state files are fixed by hand)")

    def _walk_json(self, root: Path, depth: int = 3) -> Iterator[Path]:
        """*.json below ``root`` without following links (state/<fn>/history/<v>.json is 3 deep)."""
        for e in self._names(root):
            if e.name.startswith("."):
                if e.name.endswith(".tmp"):
                    self._maybe_tmp(Path(e.path))
                continue
            if e.is_dir(follow_symlinks=False):
                if depth > 1:
                    yield from self._walk_json(Path(e.path), depth - 1)
            elif e.name.endswith(".json"):
                yield Path(e.path)

    def check_heartbeats(self) -> None:
        hb = self.layout.run / "daemons"
        owners = {d.name for d in self.layout.inflight_dirs()}
        for e in self._names(hb):
            if not e.name.endswith(".json") or e.name.startswith("."):
                continue
            owner = e.name[:-5]
            if owner in owners or owner_alive(owner, hb, self.lease):
                continue
            self.problem("stale_heartbeat", Path(e.path), f"daemon {owner} is gone", self._unlink(Path(e.path)))

    # -- index ------------------------------------------------------------------------------------
    def check_index(self) -> None:
        handled = {eid: st for eid, st in self.where.items() if st in ("processed", "dead")}
        path = index_path(self.layout)
        if not path.exists():
            if handled:
                self.problem("index_missing", path, f"{len(handled)} handled events but no index", self._rebuild)
            return
        try:
            idx = Index(self.layout, create=False)
            rows = dict(idx.db.execute("SELECT id, state FROM events"))
        except sqlite3.Error as exc:
            self.problem("index_unreadable", path, str(exc), self._rebuild_aside)
            return
        try:
            self.count("index_rows", len(rows))
            suspects = self._drift(rows, handled)
            if suspects:
                # A daemon indexes a moment after it moves a file: look again before calling it drift.
                time.sleep(DRIFT_RECHECK_DELAY)
                self._confirm_drift(idx, suspects)
        finally:
            idx.close()

    @staticmethod
    def _drift(rows: dict[str, str], handled: dict[str, str]) -> list[str]:
        out = [eid for eid, st in handled.items() if rows.get(eid) != st]
        out += [eid for eid in rows if eid not in handled]
        return out

    def _file_state(self, eid: str) -> str | None:
        for st in ("processed", "dead"):
            if os.path.lexists(getattr(self.layout, st) / f"{eid}.json"):
                return st
        return None

    def _confirm_drift(self, idx: Index, suspects: list[str]) -> None:
        for eid in suspects:
            r = idx.get(eid)
            row_state = r[7] if r is not None else None
            file_state = self._file_state(eid)
            if file_state is not None and "," in self.where.get(eid, ""):
                continue  # a duplicate, reported as such
            if file_state is not None and file_state not in self.where.get(eid, ""):
                continue  # a file that turned up or changed state after the scan: not ours to judge
            if row_state == file_state:
                continue
            if file_state is None:
                self.problem(
                    "index_orphan_row",
                    f"index:{eid}",
                    f"row says {row_state} but there is no file",
                    self._del_row(idx, eid),
                )
            elif row_state is None:
                self.problem(
                    "index_missing_row",
                    f"events/{file_state}/{eid}.json",
                    "not in the index",
                    self._put_row(idx, eid, file_state),
                )
            else:
                self.problem(
                    "index_wrong_state",
                    f"events/{file_state}/{eid}.json",
                    f"row says {row_state}, file is in {file_state}",
                    self._put_row(idx, eid, file_state),
                )

    def _del_row(self, idx: Index, eid: str) -> Callable[[], str | None]:
        def fix() -> str | None:
            idx.delete([eid])
            return "row deleted"

        return fix

    def _put_row(self, idx: Index, eid: str, state: str) -> Callable[[], str | None]:
        def fix() -> str | None:
            p = getattr(self.layout, state) / f"{eid}.json"
            try:
                ev = load_event(p, None, self.max_bytes)
            except (FileNotFoundError, CorruptEvent):
                return None
            idx.put([row_of(ev, state)])
            return "row written"

        return fix

    def _rebuild(self) -> str | None:
        idx = Index(self.layout)
        try:
            n = 0
            batch = []
            for row in rows_from_files(self.layout):
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

    def _rebuild_aside(self) -> str | None:
        path = index_path(self.layout)
        aside = path.with_name(f"events.sqlite.broken-{int(self.clock())}")
        os.rename(path, aside)
        for suffix in ("-wal", "-shm"):
            try:
                os.rename(f"{path}{suffix}", f"{aside}{suffix}")
            except FileNotFoundError:
                pass
        return self._rebuild() + f"; the broken one is {self.rel(aside)}"  # type: ignore[operator]
