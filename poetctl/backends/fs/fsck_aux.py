"""``poetctl fsck``'s checks of the spool's side files: records, tmp leftovers, feedback, state, heartbeats.

Functions of a running :class:`~.fsck.Fsck` (split from it to keep modules small); the problem kinds
are listed in :mod:`.fsck`.
"""

from __future__ import annotations

import functools
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import fsck_repair as fx
from .journal import record_from_json
from .owner import owner_alive
from .paths import HEARTBEATS
from .reader import CorruptEvent, UnreadableEvent
from .safefs import SpoolDir

if TYPE_CHECKING:
    from .fsck import Fsck

MAX_READ = 16 * 1024 * 1024


def check_records(f: Fsck) -> None:
    d = f.dir("events/records")
    pending = f.dir("events/pending")
    for e in f.entries(d):
        assert d is not None
        p = d.path / e.name
        if e.name.startswith("."):
            f._maybe_tmp(d, e.name)
            continue
        f.count("records")
        eid = e.name[:-5] if e.name.endswith(".json") else None
        try:
            record_from_json(d.read(e.name, MAX_READ))
        except FileNotFoundError:
            continue
        except UnreadableEvent as exc:
            f.unreadable(p, exc)  # never removed: its verdicts may still count
            continue
        except (CorruptEvent, ValueError, TypeError, KeyError, AttributeError):
            f.problem("bad_record", p, "unreadable completion record", fx.unlink_fix(d, e.name))
            continue
        if eid is None or not (f.where.get(eid) == "pending" or eid in f.live_inflight or fx.lexists(pending, e.name)):
            f.problem("orphan_record", p, "completion record of no pending event", fx.unlink_fix(d, e.name))


def check_tmp(f: Fsck) -> None:
    limit = f.clock() - f.tmp_age
    d = f.dir("events/tmp")
    for e in f.entries(d):
        assert d is not None
        if e.name == ".gitkeep":
            continue  # the placeholder that keeps an empty directory in git, not a writer's file
        p = d.path / e.name
        try:
            st = d.lstat(e.name)
        except FileNotFoundError:
            continue
        f.count("tmp")
        if not stat.S_ISREG(st.st_mode):
            f.problem(
                "not_regular",
                p,
                "not a regular file in events/tmp",
                f._quarantine(d, e.name, "not_regular", "not a regular file in events/tmp"),
            )
        elif st.st_mtime < limit:
            f.problem("orphan_tmp", p, f"writer leftover, {f._age(st.st_mtime)} old", fx.unlink_fix(d, e.name))
    for rel in ("events/corrupt", HEARTBEATS, "feedback/pending", "feedback/processed"):
        other = f.dir(rel)
        for e in f.entries(other):
            assert other is not None
            if e.name.startswith("."):
                f._maybe_tmp(other, e.name)


def check_feedback(f: Fsck) -> None:
    for rel in ("feedback/pending", "feedback/processed"):
        d = f.dir(rel)
        for e in f.entries(d):
            assert d is not None
            if e.name.startswith("."):
                continue
            f.count("feedback")
            try:
                problem = f.json_object(d, e.name)[1]
            except FileNotFoundError:
                continue
            except UnreadableEvent as exc:
                f.unreadable(d.path / e.name, exc)
                continue
            if problem is not None or not e.name.endswith(".json"):
                f.problem(
                    "bad_feedback",
                    d.path / e.name,
                    f"not a JSON object in a .json regular file: {problem or 'not named .json'}",
                    f._quarantine(d, e.name, "bad_feedback", "unreadable feedback record"),
                )


def check_state(f: Fsck) -> None:
    from ...handlers.learning import MAX_STATE_BYTES, STATE_FILE, parse_learning
    from ...state import updated_at

    state = f.dir("state")
    if state is None:
        return
    for d, name in walk_json(f, state):
        f.count("state")
        try:
            if d.rel == "state" and name == STATE_FILE:  # by the learning engine's own rules
                parse = functools.partial(parse_learning, where=str(d.path / name))
                doc, problem = f.json_object(d, name, parse, MAX_STATE_BYTES)
            else:
                doc, problem = f.json_object(d, name)
        except FileNotFoundError:
            continue
        except UnreadableEvent as exc:
            f.unreadable(d.path / name, exc)
            continue
        if problem is None and "updated_at" in doc and updated_at(doc) is None:
            problem = "$.updated_at: expected a number (seconds since the epoch)"
        if problem is not None:
            f.problem("bad_state", d.path / name, f"{problem} (state files are fixed by hand)")


def walk_json(f: Fsck, d: SpoolDir, depth: int = 3) -> Iterator[tuple[SpoolDir, str]]:
    """*.json below ``d`` without following links (state/<fn>/history/<v>.json is 3 deep)."""
    for e in f.entries(d):
        if e.name.startswith("."):
            if e.name.endswith(".tmp"):
                f._maybe_tmp(d, e.name)
            continue
        if e.is_symlink() and depth > 1 and not e.name.endswith(".json"):
            f.linked(d.path / e.name)  # a linked state/<fn> or history/
        elif e.is_dir(follow_symlinks=False):
            if depth > 1:
                sub = f.child(d, e.name)
                if sub is not None:
                    yield from walk_json(f, sub, depth - 1)
        elif e.name.endswith(".json"):
            yield d, e.name


def check_heartbeats(f: Fsck) -> None:
    hb = f.dir(HEARTBEATS)
    inflight = f.dir("events/inflight")
    owners = {e.name for e in f.entries(inflight) if e.is_dir(follow_symlinks=False)}
    for e in f.entries(hb):
        assert hb is not None
        if not e.name.endswith(".json") or e.name.startswith("."):
            continue
        owner = e.name[:-5]
        if owner in owners or owner_alive(owner, hb.path, f.lease):
            continue
        f.problem("stale_heartbeat", hb.path / e.name, f"daemon {owner} is gone", fx.unlink_fix(hb, e.name))
