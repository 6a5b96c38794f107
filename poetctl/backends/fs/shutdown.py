"""How an :class:`~.consumer.FsConsumer` ends: a clean close, or (for tests) a simulated death.

A clean close hands back what is left, files what is done, syncs, and removes this owner's
files and locks, so no other daemon ever has to recover after it. A simulated death leaves
everything as a killed process would (in-flight files, journal), with its locks let go.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from .journal import JOURNAL
from .layout import fsync_dir
from .recovery import unlock_owner

if TYPE_CHECKING:
    from .consumer import FsConsumer


def close(c: FsConsumer) -> None:
    """Hand back what is left, file what is done, sync, remove this owner's files and locks."""
    if c._closed or c._dead:
        return
    c._closed = True
    c.transport._detach(c)
    if c._observer is not None:
        try:
            c._observer.stop()
        except Exception:
            pass
    while c.outstanding:
        c.collect()
    if c.ready:
        c.release(list(c.ready))
        c.ready.clear()
    if c.mover is not None:
        # Before the safety net below: the mover's queue is handled events, not leftovers.
        c.mover.close()
    # Safety net: anything still claimed by us goes back.
    for e in os.scandir(c.inflight_dir):
        if e.name.endswith(".json"):
            try:
                os.rename(e.path, c.layout.pending / e.name)
                c.handed_back += 1
            except FileNotFoundError:
                pass
    c._unsynced = True
    c.sync()
    fsync_dir(c.layout.pending)
    if c.reconciler is not None and c.reconciler.due:
        c.recovery.run(all_dead=False)  # a dead daemon's mover was still filing at start
        c._reconcile()
    c.journal.close()
    if c.indexer is not None:
        c.indexer.close()
    if c.reconciler is not None:
        c.reconciler.finish()  # last: our rows are written, this run ended cleanly
    for p in (c.inflight_dir / JOURNAL, c.heartbeat_dir / f"{c.owner}.json"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(c.inflight_dir)
    except OSError:
        pass
    c._close_fds()
    unlock_owner(c.layout, c.owner, c._owner_fd)
    c._owner_fd = -1


def simulate_death(c: FsConsumer) -> None:
    """Test hook: this process died. Locks go (fds closed, files left), the mover child is
    SIGKILLed, the journal and in-flight files stay, and the transport's default ``alive``
    says this owner is dead."""
    if c._closed or c._dead:
        return
    c._dead = True
    c.transport._detach(c)
    c.transport.dead_owners.add(c.owner)
    if c._observer is not None:
        try:
            c._observer.stop()
        except Exception:
            pass
    if c.mover is not None:
        try:
            os.kill(c.mover.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        c.mover.proc.wait()
        for f in (c.mover.proc.stdin, c.mover.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
    c.journal.close()
    if c.indexer is not None:
        c.indexer.close()
    c._close_fds()
    os.close(c._owner_fd)
    c._owner_fd = -1
