"""fsck's in-flight checks: owner directories in ``events/inflight`` and the events of owners that are gone.

A live owner's work is left alone; a gone owner's events go back to pending with their journal records
(``stale_inflight``), or lose their in-flight name when a mover already filed them (``filed_inflight``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import fsck_repair as fx
from .journal import JOURNAL, Record, journal_record, parse_journal
from .owner import HOST, OWNER_RE, owner_alive
from .paths import HEARTBEATS
from .reader import CorruptEvent, UnreadableEvent
from .safefs import SpoolDir

if TYPE_CHECKING:
    from .fsck import Fsck


def owner_dirs(f: Fsck) -> dict[str, tuple[SpoolDir, list[Any]]]:
    """owner -> (its directory, its entries); stray files and links in events/inflight are reported."""
    out: dict[str, tuple[SpoolDir, list[Any]]] = {}
    inflight = f.dir("events/inflight")
    for e in f.entries(inflight):
        assert inflight is not None
        if e.name.startswith("."):
            continue  # hidden files (.gitkeep) are not the daemon's, as in pending/
        if e.is_symlink():
            f.linked(inflight.path / e.name)
        elif not e.is_dir(follow_symlinks=False):
            f.problem(
                "stray_file",
                inflight.path / e.name,
                "expected only owner directories in events/inflight",
                f.quarantine(inflight, e.name, "stray_file", "not an owner directory in events/inflight"),
            )
        else:
            d = f.child(inflight, e.name)
            if d is not None:
                out[e.name] = (d, f.entries(d))
    return out


def _alive(f: Fsck, owner: str) -> bool:
    m = OWNER_RE.match(owner)
    if m is not None and m["host"] != HOST and f.dir(HEARTBEATS) is None and f.linked_dirs:
        return True  # judged by a heartbeat we will not read through a link: leave its work alone
    return owner_alive(owner, f.layout.root / HEARTBEATS, f.lease)


def check_inflight(f: Fsck, dirs: dict[str, tuple[SpoolDir, list[Any]]]) -> None:
    processed = f.dir("events/processed")
    for owner, (d, entries) in dirs.items():
        alive = OWNER_RE.match(owner) is not None and _alive(f, owner)
        names = [e for e in entries if e.name != JOURNAL]
        f.count("inflight", sum(1 for e in names if e.name.endswith(".json")))
        if alive:
            f.live_inflight.update((e.name[:-5], (d, e.name)) for e in names if e.name.endswith(".json"))
            f.advance(len(entries))
            continue
        try:
            journal = _journal(d)
        except UnreadableEvent as exc:
            # Requeueing without the journal would forget attempts: the whole owner waits for its mode fixed.
            f.unreadable(d.path / JOURNAL, exc)
            f.advance(len(entries))
            continue
        for e in names:
            p = d.path / e.name
            if not e.name.endswith(".json") or e.name.startswith("."):
                f.problem(
                    "stray_file",
                    p,
                    "unexpected file in an in-flight directory",
                    f.quarantine(d, e.name, "bad_name", "unexpected file in an in-flight directory"),
                )
                continue
            if not e.is_file(follow_symlinks=False):
                f.problem(
                    "not_regular",
                    p,
                    "not a regular file (links are never followed)",
                    f.quarantine(d, e.name, "not_regular", "not a regular file in an in-flight directory"),
                )
                continue
            if processed is not None and d.same_file(e.name, processed, e.name):
                # A completion mover linked it into processed/ and died before the unlink.
                f.problem(
                    "filed_inflight",
                    p,
                    f"owner {owner} is gone; the event is already in processed/ (same file)",
                    fx.unlink_fix(d, e.name),
                )
                continue
            rec = journal_record(journal, e.name[:-5], f.checksum(d, e.name))
            f.problem(
                "stale_inflight",
                p,
                f"owner {owner} is gone; the event waits in flight forever",
                fx.requeue_fix(f.layout, d, e.name, rec),
            )
        f.advance(len(entries))
        inflight = f.dir("events/inflight")
        if f.repair and inflight is not None:
            fx.remove_owner_dir(f.layout, inflight, d, owner, JOURNAL)


def _journal(d: SpoolDir) -> dict[tuple[str, str | None], Record]:
    try:
        return parse_journal(d.read(JOURNAL, 1 << 30))
    except UnreadableEvent:
        raise
    except (FileNotFoundError, CorruptEvent):
        return {}  # absent, or a link/non-regular file: never read through it
