"""Backup and restore of a filesystem spool: a consistent tar archive (zstd, else gzip) with a manifest.

Consistency while daemons run: events only move forward (pending -> inflight/<owner>
-> processed | dead), so the directories are walked in that order and an event
is taken once, by id, in the first state it was seen in (a state it had
during the backup). An event that moves during the walk is either read where it
was, or (its file gone when opened) found in a later directory, which is listed
after the earlier one was read. Each file is opened through a directory fd
without following links (:class:`SpoolDir`), and its checksum verified before
it is archived; a damaged file is left out and counted (``fsck`` is the tool
for it). An in-flight event is archived as pending: the daemon holding it does
not exist in a restored spool. A dead event is archived with its
``dead/<id>.error``.

Each member is written to the archive as it is read (:class:`~.archive.ArchiveWriter`):
the walk holds one file's bytes at a time, and per event its id (to take it
once) and its member's checksum (the manifest); never the spool. Restore
reads the archives twice (:class:`~.archive.Archives`): the first pass
refuses them if any member's checksum differs from the manifest (naming the
member) before anything is written; the second writes member by member into
an empty spool no daemon runs on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from ...errors import SpoolIOError, TemporaryFailure, UsageError
from ...transport import Record, dead_letter_info
from .archive import ERROR, Archives, ArchiveWriter, event_id, is_event, read_archive
from .corrupt_names import REASON_SUFFIX
from .layout import SUFFIX, SpoolLayout
from .reader import CorruptEvent, decode_event
from .safefs import SpoolDir

MAX_FILE = 64 << 20
MAX_ERROR = 16 << 20  # a dead-letter record (as replay.read_error reads it)
# Walk order = the direction events move; an id seen again later is already archived.
EVENT_STATES = ("pending", "inflight", "processed", "dead")
TREES = ("state", "feedback")
RESTORED = "restored from a backup (the archive keeps no original error)"


def _read_events(d: SpoolDir, state: str, w: ArchiveWriter, seen: set[str], max_bytes: int) -> None:
    for name in sorted(d.names()):
        if not name.endswith(SUFFIX) or name.startswith(".") or name[: -len(SUFFIX)] in seen:
            continue
        try:
            data = d.read(name, max_bytes)
        except FileNotFoundError:
            continue  # moved on: found in a later state's directory
        except (CorruptEvent, OSError) as exc:
            w.skipped.append(f"{d.path / name}: {exc}")
            continue
        try:
            ev = decode_event(data, None, where=str(d.path / name), expected_id=name[: -len(SUFFIX)])
        except CorruptEvent as exc:
            w.skipped.append(str(exc))
            continue
        kept = "pending" if state == "inflight" else state
        w.add(f"events/{kept}/{name}", data, ev.timestamp)
        seen.add(ev.id)
        if state == "dead":  # its record: why it died (written before the event moved here)
            try:
                w.add(f"events/dead/{ev.id}{ERROR}", d.read(f"{ev.id}{ERROR}", MAX_ERROR))
            except FileNotFoundError:
                pass  # fsck's dead_without_error; restore writes a stand-in
            except (CorruptEvent, OSError) as exc:
                w.skipped.append(f"{d.path / ev.id}{ERROR}: {exc}")


def _read_tree(d: SpoolDir, w: ArchiveWriter) -> None:
    """Every regular file below ``d`` (links and other odd entries are left out)."""
    for entry in sorted(d.entries(), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            with d.child(entry.name) as sub:
                _read_tree(sub, w)
        elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(".tmp"):
            try:
                w.add(f"{d.rel}/{entry.name}", d.read(entry.name, MAX_FILE))
            except FileNotFoundError:
                continue
            except (CorruptEvent, OSError) as exc:
                w.skipped.append(f"{d.path / entry.name}: {exc}")


def walk(layout: SpoolLayout, w: ArchiveWriter, max_bytes: int) -> None:
    """Walk the spool once, in the order events move, archiving as it goes (see the module docstring)."""
    seen: set[str] = set()
    for state in EVENT_STATES:
        try:
            with SpoolDir(layout, f"events/{state}") as d:
                if state == "inflight":
                    for owner in sorted(d.names()):
                        if d.is_dir(owner):
                            with d.child(owner) as od:
                                _read_events(od, state, w, seen, max_bytes)
                else:
                    _read_events(d, state, w, seen, max_bytes)
        except FileNotFoundError:
            continue
    seen.clear()
    try:
        with SpoolDir(layout, "events/corrupt") as d:
            for name in sorted(d.names()):
                if d.is_regular(name) and not name.startswith("."):
                    try:
                        w.add(f"events/corrupt/{name}", d.read(name, max_bytes + 65536))
                    except (FileNotFoundError, CorruptEvent, OSError):
                        continue
    except FileNotFoundError:
        pass
    for tree in TREES:
        try:
            with SpoolDir(layout, tree) as d:
                _read_tree(d, w)
        except FileNotFoundError:
            continue


def write_backup(
    layout: SpoolLayout, dest: Path, *, max_bytes: int, version: str, since: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Archive the spool into ``dest`` (created exclusively); return the manifest."""
    with ArchiveWriter(dest, since) as w:
        walk(layout, w, max_bytes)
        return w.finish(version, {"spool": str(layout.root)})


# -- restore ----------------------------------------------------------------------------------
def refuse_attached(layout: SpoolLayout, lease: float) -> None:
    """:class:`TemporaryFailure` (75) if a live daemon is attached to the spool (its heartbeat in run/daemons/)."""
    if not layout.root.exists():
        return
    from .status import FsStatus

    alive = [d for d in FsStatus(layout).figures(time.time(), lease, lease)["daemons"] if d["alive"]]
    if alive:
        raise TemporaryFailure(
            f"a daemon is attached to {layout.root} ({alive[0].get('owner')}); stop it: "
            "restore only into a spool no daemon runs on"
        )


def restore_into(
    layout: SpoolLayout, archives: Archives, until: float | None, *, lease: float = 30.0
) -> dict[str, int]:
    """Write the verified ``archives`` into the empty spool ``layout``, streaming; events after ``until`` are left
    out. Counts per state.

    A dead event comes back with its archived record (``dead/<id>.error``), or,
    from an archive without one, a record saying it was restored from a backup.
    """
    refuse_attached(layout, lease)
    if layout.root.exists() and any(_has_files(layout.root)):
        raise UsageError(f"{layout.root} is not empty; restore only into a new or empty spool")
    layout.init()
    names = archives.names
    counts: dict[str, int] = {}
    corrupt = 0
    now = time.time()
    with ExitStack() as stack:
        dirs: dict[str, SpoolDir] = {}

        def target(rel: str) -> SpoolDir:
            if rel not in dirs:
                _make_dirs(layout, rel)
                dirs[rel] = stack.enter_context(SpoolDir(layout, rel))
            return dirs[rel]

        for name, data in archives.members():
            parts = name.split("/")
            if is_event(name):
                if until is not None and archives.timestamp(name) > until:
                    continue
                counts[parts[1]] = counts.get(parts[1], 0) + 1
                eid = event_id(name)
                if parts[1] == "dead" and f"events/dead/{eid}{ERROR}" not in names:  # an older archive: no record
                    info = dead_letter_info(eid, RESTORED, Record(), now)
                    target("events/dead").create(f"{eid}{ERROR}", orjson.dumps(info, option=orjson.OPT_INDENT_2))
            elif parts[0] == "events" and parts[1] == "dead":  # a record: only beside its event (--until)
                json_name = f"events/dead/{event_id(name)}{SUFFIX}"
                if json_name not in names or (until is not None and archives.timestamp(json_name) > until):
                    continue
            elif parts[0] == "events":
                corrupt += not name.endswith(REASON_SUFFIX)
            elif parts[0] == "kv":
                counts["skipped_nats_state"] = counts.get("skipped_nats_state", 0) + 1
                continue  # NATS KV function state: the spool keeps state/ as files; `state rebuild` makes it
            elif until is not None:
                continue  # state/ and feedback/ describe the end of the backup, not TIME: rebuild them
            rel, _, base = name.rpartition("/")
            target(rel).create(base, data)
        for d in dirs.values():
            d.fsync()
    counts["corrupt"] = corrupt
    from .fsck_repair import rebuild_index

    with SpoolDir(layout, "events/processed") as p, SpoolDir(layout, "events/dead") as dd:
        rebuild_index(layout, p, dd)
    return counts


def _make_dirs(layout: SpoolLayout, rel: str) -> None:
    path = layout.root
    for part in rel.split("/"):
        path = path / part
        try:
            os.mkdir(path, 0o750)
        except FileExistsError:
            if path.is_symlink() or not path.is_dir():
                raise SpoolIOError(f"{path} is a symlink or not a directory") from None


def _has_files(root: Path) -> Iterator[str]:
    for _dirpath, _dirs, files in os.walk(root):
        yield from files


__all__ = ["Archives", "read_archive", "refuse_attached", "restore_into", "walk", "write_backup"]
