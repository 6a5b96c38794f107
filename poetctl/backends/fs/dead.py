"""The dead-letter queue: ``events/dead/<id>.json`` beside ``<id>.error``.

Listing reads each dead event (verified) and its error record. Retry is
:class:`poetctl.backends.fs.replay.Requeuer` with ``source="dead"``: the event goes
back to pending with fresh attempts, a summary of its last error moves into
``metadata.replayed.error`` and ``<id>.error`` is removed. Purge deletes the
event and its ``.error`` (regular files only, through a descriptor of the
dead directory, so a symlink is never followed and nothing outside the spool
is ever removed) and drops the index rows. A linked ``events/``, ``dead/`` or
``index/`` is refused (74) before anything is read (:func:`refuse_links`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .index import Index
from .layout import SpoolLayout
from .query import Found
from .replay import read_error
from .safefs import open_dir, refuse_linked


def refuse_links(layout: SpoolLayout) -> None:
    """Raise :class:`~poetctl.backends.fs.safefs.LinkedDir` (74) if ``events/``, ``dead/`` or ``index/`` is a link.

    Every ``dead`` command checks this before it reads anything; ``retry``
    then goes through :class:`~poetctl.backends.fs.replay.Requeuer`, which checks the
    directories it needs, and ``purge`` deletes through a descriptor of dead/.
    """
    refuse_linked(layout, ("events", "events/dead", "index"))


@dataclass(slots=True)
class DeadEntry:
    found: Found
    error: dict[str, Any] | None

    def row(self) -> dict[str, Any]:
        """The ``dead list`` row (JSON-ready)."""
        ev = self.found.event
        err = self.error or {}
        return {
            "id": ev.id,
            "type": ev.type,
            "topic": ev.topic,
            "timestamp": ev.timestamp,
            "correlation_id": ev.correlation_id,
            "reason": err.get("reason"),
            "attempts": err.get("attempts"),
            "error": err.get("error"),
            "handler": err.get("handler"),
            "dead_at": err.get("dead_at"),
        }


def entries(layout: SpoolLayout, found: Iterable[Found]) -> list[DeadEntry]:
    return [DeadEntry(f, read_error(layout, f.id)) for f in found]


def orphan_errors(layout: SpoolLayout) -> list[str]:
    """Ids with ``dead/<id>.error`` but no ``dead/<id>.json``."""
    d = open_dir(layout, "events/dead")
    if d is None:
        return []
    with d:
        names = {e.name for e in d.entries()}
    return sorted(
        n[:-6] for n in names if n.endswith(".error") and not n.startswith(".") and f"{n[:-6]}.json" not in names
    )


@dataclass(slots=True)
class PurgeResult:
    purged: list[str]
    skipped: list[tuple[str, str]]


def purge(
    layout: SpoolLayout,
    ids: Iterable[str],
    index: Index | None,
    warn: Callable[[str], None],
    *,
    orphans: Iterable[str] = (),
) -> PurgeResult:
    """Delete dead events (and their ``.error``) by id; also the ``.error`` of ``orphans``."""
    res = PurgeResult([], [])
    d = open_dir(layout, "events/dead")
    if d is None:
        return res
    with d:
        for eid in ids:
            got = d.unlink_regular(f"{eid}.json")
            if got is False:
                res.skipped.append((eid, "not a regular file (a link?); left alone - 'poetctl fsck' reports it"))
                continue
            if got is None:
                res.skipped.append((eid, "it left dead/ meanwhile"))
                continue
            if d.unlink_regular(f"{eid}.error") is False:
                warn(f"{d.path}/{eid}.error is not a regular file; left alone")
            res.purged.append(eid)
        for eid in orphans:
            if d.unlink_regular(f"{eid}.error"):
                res.purged.append(eid)
        if res.purged:
            d.fsync()
    if index is not None and res.purged:
        for start in range(0, len(res.purged), 10000):
            index.delete(res.purged[start : start + 10000])
    return res
