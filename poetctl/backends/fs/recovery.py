"""Recovery: a dead daemon's in-flight events back to pending, with what its journal says.

An owner (``<host>.<pid>.<start>``, see :mod:`.owner`) is recovered once it is
provably dead (``alive(owner)`` says no) *and* its owner lock
(``run/owners/<owner>.lock``) can be taken: the lock is inherited by the
owner's mover child, so events it still files are never moved twice. The
journal becomes records (``events/records/<id>.json``, merged by
:func:`~.journal.save_merged`, the one merge that ``fsck --repair`` uses too),
so the next claimer skips finished handlers and keeps counting attempts and
deliveries (a delivery that began and never ended is a death: an attempt).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from ...daemon import log
from .journal import JOURNAL, journal_record, parse_journal, quarantine, save_merged, stated_checksum_at
from .layout import FILE_MODE, SpoolLayout
from .paths import HEARTBEATS, OWNER_LOCKS
from .reader import CorruptEvent
from .safefs import LinkedDir, SpoolDir, open_dir


def lock_owner(layout: SpoolLayout, owner: str) -> int:
    """Hold ``run/owners/<owner>.lock`` (for as long as the daemon or its mover lives); its fd."""
    path = layout.root / OWNER_LOCKS / f"{owner}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def unlock_owner(layout: SpoolLayout, owner: str, fd: int) -> None:
    """A clean stop: remove the lock file, then let go of it."""
    locks = open_dir(layout, OWNER_LOCKS)
    if locks is not None:
        with locks:
            locks.unlink(f"{owner}.lock")
    os.close(fd)


class Recovery:
    """Recovers the dead owners of one spool on behalf of ``owner`` (one per consumer)."""

    def __init__(self, layout: SpoolLayout, owner: str, alive: Callable[[str], bool]) -> None:
        self.layout = layout
        self.owner = owner
        self.alive = alive
        self.busy = False  # a dead owner's mover still files: its work is not ours yet
        self.total = 0  # events moved back by every run (the consumer reports each fetch's share)
        self._inflight: SpoolDir | None = None
        self._warned: set[Path] = set()

    def run(self, all_dead: bool) -> int:
        """Return the in-flight events of dead owners to pending; the count moved.

        ``all_dead`` (at start): wait up to 5 s for a dead owner's mover to let
        go of its lock. Every directory is opened without following links: an
        owner directory (or ``run/owners``) that is a symlink is reported once
        and left alone, never recovered through.
        """
        moved = 0
        self.busy = False
        # Opened once (no-follow) and listed by descriptor: recovery runs whenever a bucket is taken, so a
        # listing must cost no more than the path lookup it replaces.
        if self._inflight is None:
            self._inflight = SpoolDir(self.layout, "events/inflight")
        inflight = self._inflight
        for e in list(inflight.entries()):
            name = e.name
            if name == self.owner or not e.is_dir(follow_symlinks=False):
                if e.is_symlink():
                    self.warn_linked(inflight.path / name)
                continue
            if self.alive(name):
                continue
            lock = self._take_owner_lock(name, wait=5.0 if all_dead else 0.0)
            if lock is None:
                self.busy = True
                continue
            try:
                moved += self._recover_owner(inflight, name)
            finally:
                if lock >= 0:
                    unlock_owner(self.layout, name, lock)
        if moved:
            with SpoolDir(self.layout, "events/pending") as pending:
                pending.fsync()
            log.recovered(moved)
            self.total += moved
        return moved

    def close(self) -> None:
        if self._inflight is not None:
            self._inflight.close()
            self._inflight = None

    def warn_linked(self, path: Path) -> None:
        """One stderr line per linked directory met (rescans would repeat it)."""
        if path not in self._warned:
            self._warned.add(path)
            log.warning("a symlink or not a directory; not recovered through it (fix it by hand)", path=str(path))

    def _take_owner_lock(self, owner: str, wait: float) -> int | None:
        """Lock a dead owner's lock file: its fd, -1 if it has none, None while still held."""
        try:
            locks = SpoolDir(self.layout, OWNER_LOCKS)
        except FileNotFoundError:
            return -1
        except LinkedDir as exc:
            self.warn_linked(exc.path)
            return None  # cannot tell whether its mover still files: leave its work alone
        with locks:
            try:
                fd = os.open(f"{owner}.lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=locks.fd)
            except OSError:
                return -1  # no lock file (an older daemon): the pid/lease verdict stands
        deadline = time.monotonic() + wait  # real time: it waits for another process
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return None
                time.sleep(0.02)

    def _recover_owner(self, inflight: SpoolDir, owner: str) -> int:
        try:
            d = inflight.child(owner)
        except FileNotFoundError:
            return 0
        except LinkedDir as exc:  # swapped for a link since the listing
            self.warn_linked(exc.path)
            return 0
        moved = 0
        layout = self.layout
        with (
            d,
            SpoolDir(layout, "events/pending") as pending,
            SpoolDir(layout, "events/processed") as processed,
        ):
            try:
                journal = parse_journal(d.read(JOURNAL, 1 << 30))
            except (FileNotFoundError, CorruptEvent):
                journal = {}  # none, or a link / not a regular file: never read through it
            for name in d.names():
                if name == JOURNAL:
                    continue
                if not name.endswith(".json"):
                    quarantine(layout, d.path / name, "bad_name", "unexpected file in an in-flight directory", src=d)
                    continue
                if d.same_file(name, processed, name):
                    d.unlink(name)  # its mover linked it into processed/ and died before the unlink
                    continue
                rec = journal_record(journal, name[:-5], stated_checksum_at(d, name)) if journal else None
                if rec is not None and (rec.done or rec.failures or rec.deliveries):
                    with SpoolDir(layout, "events/records") as records:
                        save_merged(records, name, rec)
                try:
                    d.rename(name, pending, name, replace=True)
                    moved += 1
                except FileNotFoundError:
                    continue
            d.unlink(JOURNAL)
        inflight.rmdir(owner)
        beats = open_dir(layout, HEARTBEATS)
        if beats is not None:
            with beats:
                beats.unlink(f"{owner}.json")
        return moved


__all__ = ["Recovery", "lock_owner", "unlock_owner"]
