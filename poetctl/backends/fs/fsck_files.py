"""``poetctl fsck``'s checks of the files beside the events: completion records, tmp leftovers,
feedback records, function and learning state, heartbeats (split from :mod:`.fsck` to keep modules small).

Each function takes the running :class:`~.fsck.Fsck` and reports through it.
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


def check_records(fk: Fsck) -> None:
    d = fk.dir("events/records")
    pending = fk.dir("events/pending")
    for e in fk.entries(d):
        assert d is not None
        p = d.path / e.name
        if e.name.startswith("."):
            fk._maybe_tmp(d, e.name)
            continue
        fk.count("records")
        eid = e.name[:-5] if e.name.endswith(".json") else None
        try:
            record_from_json(d.read(e.name, MAX_READ))
        except FileNotFoundError:
            continue
        except UnreadableEvent as exc:
            fk.unreadable(p, exc)  # never removed: its verdicts may still count
            continue
        except (CorruptEvent, ValueError, TypeError, KeyError, AttributeError):
            fk.problem("bad_record", p, "unreadable completion record", fx.unlink_fix(d, e.name))
            continue
        if eid is None or not (
            fk.where.get(eid) == "pending" or eid in fk.live_inflight or fx.lexists(pending, e.name)
        ):
            fk.problem("orphan_record", p, "completion record of no pending event", fx.unlink_fix(d, e.name))


def check_tmp(fk: Fsck) -> None:
    limit = fk.clock() - fk.tmp_age
    d = fk.dir("events/tmp")
    for e in fk.entries(d):
        assert d is not None
        if e.name == ".gitkeep":
            continue  # the placeholder that keeps an empty directory in git, not a writer's file
        p = d.path / e.name
        try:
            st = d.lstat(e.name)
        except FileNotFoundError:
            continue
        fk.count("tmp")
        if not stat.S_ISREG(st.st_mode):
            fk.problem(
                "not_regular",
                p,
                "not a regular file in events/tmp",
                fk.quarantine(d, e.name, "not_regular", "not a regular file in events/tmp"),
            )
        elif st.st_mtime < limit:
            fk.problem("orphan_tmp", p, f"writer leftover, {fk._age(st.st_mtime)} old", fx.unlink_fix(d, e.name))
    for rel in ("events/corrupt", HEARTBEATS, "feedback/pending", "feedback/processed"):
        other = fk.dir(rel)
        for e in fk.entries(other):
            assert other is not None
            if e.name.startswith("."):
                fk._maybe_tmp(other, e.name)


def check_feedback(fk: Fsck) -> None:
    for rel in ("feedback/pending", "feedback/processed"):
        d = fk.dir(rel)
        for e in fk.entries(d):
            assert d is not None
            if e.name.startswith("."):
                continue
            fk.count("feedback")
            try:
                problem = fk.json_object(d, e.name)[1]
            except FileNotFoundError:
                continue
            except UnreadableEvent as exc:
                fk.unreadable(d.path / e.name, exc)
                continue
            if problem is not None or not e.name.endswith(".json"):
                fk.problem(
                    "bad_feedback",
                    d.path / e.name,
                    f"not a JSON object in a .json regular file: {problem or 'not named .json'}",
                    fk.quarantine(d, e.name, "bad_feedback", "unreadable feedback record"),
                )


def check_state(fk: Fsck) -> None:
    from ...storage import LEARNING_FILE as STATE_FILE
    from ...storage import MAX_LEARNING_BYTES as MAX_STATE_BYTES
    from ...storage import parse_learning
    from .storage import updated_at

    state = fk.dir("state")
    if state is None:
        return
    for d, name in _walk_json(fk, state):
        fk.count("state")
        try:
            if d.rel == "state" and name == STATE_FILE:  # by the learning engine's own rules
                parse = functools.partial(parse_learning, where=str(d.path / name))
                doc, problem = fk.json_object(d, name, parse, MAX_STATE_BYTES)
            else:
                doc, problem = fk.json_object(d, name)
        except FileNotFoundError:
            continue
        except UnreadableEvent as exc:
            fk.unreadable(d.path / name, exc)
            continue
        if problem is None and "updated_at" in doc and updated_at(doc) is None:
            problem = "$.updated_at: expected a number (seconds since the epoch)"
        if problem is not None:
            fk.problem("bad_state", d.path / name, f"{problem} (state files are fixed by hand)")


def _walk_json(fk: Fsck, d: SpoolDir, depth: int = 3) -> Iterator[tuple[SpoolDir, str]]:
    """*.json below ``d`` without following links (state/<fn>/history/<v>.json is 3 deep)."""
    for e in fk.entries(d):
        if e.name.startswith("."):
            if e.name.endswith(".tmp"):
                fk._maybe_tmp(d, e.name)
            continue
        if e.is_symlink() and depth > 1 and not e.name.endswith(".json"):
            fk.linked(d.path / e.name)  # a linked state/<fn> or history/
        elif e.is_dir(follow_symlinks=False):
            if depth > 1:
                sub = fk.child(d, e.name)
                if sub is not None:
                    yield from _walk_json(fk, sub, depth - 1)
        elif e.name.endswith(".json"):
            yield d, e.name


def check_heartbeats(fk: Fsck) -> None:
    hb = fk.dir(HEARTBEATS)
    inflight = fk.dir("events/inflight")
    owners = {e.name for e in fk.entries(inflight) if e.is_dir(follow_symlinks=False)}
    for e in fk.entries(hb):
        assert hb is not None
        if not e.name.endswith(".json") or e.name.startswith("."):
            continue
        owner = e.name[:-5]
        if owner in owners or owner_alive(owner, hb.path, fk.lease):
            continue
        fk.problem("stale_heartbeat", hb.path / e.name, f"daemon {owner} is gone", fx.unlink_fix(hb, e.name))
