"""A group commit written while it is being built: :meth:`FsTransport.stream`'s tmp files.

``emit_many`` builds (validates, seals, serialises) each event in Python and
the spool then writes it with a few syscalls; done one after the other, the
sync of the whole group waited for the last event to be built. Here the
caller's thread writes the tmp files of every CHUNK_FILES built events in a
burst (the same open, write and close per event as before) and a helper
thread makes what is written so far durable with ``syncfs`` while the caller
builds the next chunk. ``syncfs`` releases the GIL for its whole run, so the
device works while Python builds. The last sync, begun after the last write,
covers every file, and only then is anything renamed into ``pending/``.

Bursts, not a file per event: interleaving a syscall with each event's build
cost more interpreter CPU per event here (cold caches after each kernel
entry) than the overlap saved. Nothing is visible before the publish: a
failure (a bad item, a failed write or sync, an interrupt) removes the tmp
files, and a process killed meanwhile leaves them in ``events/tmp``, never in
``pending/``, as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ...errors import SpoolIOError
from . import writer
from .layout import FILE_MODE, SpoolLayout
from .writer import O_CREATE, _close_member, _discard, _Member, _open_dir

# Write a burst of tmp files (and kick the background sync) every this many events or bytes,
# whichever comes first: one syncfs covers many files (each also flushes the device's cache).
CHUNK_FILES = 256
CHUNK_BYTES = 1 << 20


class TmpStream:
    """Tmp files for one group, written in bursts while it is built and synced in the background.

    :meth:`add` each stored line in order, then :meth:`commit` publishes them
    (rename or link into ``dest``, one directory fsync) once every file is
    durable; :meth:`abort` removes them. Below ``SYNCFS_THRESHOLD`` files, or
    without ``syncfs``, the files are fsync'ed one by one at the end, as
    :func:`writer.commit` does. Not thread-safe: one caller's thread uses it.
    """

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout
        self.m = _Member([])
        self.m.tfd = _open_dir(layout.tmp)
        self._prefix = f".{os.getpid()}.{os.urandom(6).hex()}."
        self._queue: list[bytes] = []  # built, not yet written (see add)
        self._qbytes = 0
        self._fds: list[int] = []  # kept open until syncfs takes over (or to fsync each at the end)
        self._written = 0  # files fully written (read by the sync thread)
        self._since = 0  # files since the last kick
        import threading  # here: only streams (batches) need it, not a one-event emit (start-up)

        self._thread: threading.Thread | None = None
        self._kick = threading.Event()
        self._stop = False
        self._synced = 0  # files known durable: written before a syncfs that succeeded began
        self._error: int | None = None  # errno of a failed background syncfs

    def add(self, data: bytes) -> None:
        """Queue ``data`` for the next tmp file; raises :class:`SpoolIOError` (the stream is then aborted).

        Files are written in bursts of CHUNK_FILES (or CHUNK_BYTES): the
        interpreter builds the next events with warm caches, rather than after
        every syscall.
        """
        self._queue.append(data)
        self._qbytes += len(data)
        if len(self._queue) >= CHUNK_FILES or self._qbytes >= CHUNK_BYTES:
            self._burst()

    def _burst(self) -> None:
        queue, self._queue, self._qbytes = self._queue, [], 0
        for data in queue:
            self._write(data)
        if self._thread is not None and self._since:
            if self._error is not None:  # a background sync failed: stop writing now
                self.abort()
                raise SpoolIOError(f"cannot write into {self.layout.tmp}: syncfs: {os.strerror(self._error)}")
            self._since = 0
            self._kick.set()

    def _write(self, data: bytes) -> None:
        m = self.m
        name = f"{self._prefix}{len(m.names)}.tmp"
        try:
            fd = os.open(name, O_CREATE, FILE_MODE, dir_fd=m.tfd)
        except OSError as exc:
            self.abort()
            raise SpoolIOError(f"cannot write into {self.layout.tmp}: {exc.strerror or exc}") from None
        m.names.append(name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            os.close(fd)
            self.abort()
            raise SpoolIOError(f"cannot write into {self.layout.tmp}: {exc.strerror or exc}") from None
        if self._thread is None:
            self._fds.append(fd)
            if len(self._fds) >= writer.SYNCFS_THRESHOLD and writer.syncfs_fn() is not None:
                # Enough files for syncfs: close them all (one flush covers them) and sync in the background.
                for f in self._fds:
                    os.close(f)
                self._fds = []
                self._written = len(m.names)
                self._start()
            return
        os.close(fd)
        self._written += 1
        self._since += 1

    def _start(self) -> None:
        import threading

        self._thread = threading.Thread(target=self._sync_loop, name="poetctl-tmp-sync", daemon=True)
        self._thread.start()
        self._kick.set()

    def _sync_loop(self) -> None:
        syncfs = writer.syncfs_fn()
        assert syncfs is not None
        while True:
            self._kick.wait()
            self._kick.clear()
            last = self._stop  # read before _written: a stop seen here means every file was written
            written = self._written
            if syncfs(self.m.tfd) != 0:
                self._error = writer._errno()
                return
            self._synced = written
            if last:
                return

    def _sync(self) -> None:
        """Wait until every written file is durable; raises :class:`SpoolIOError`."""
        if self._thread is None:
            fds, self._fds = self._fds, []
            try:
                for fd in fds:
                    os.fsync(fd)
            except OSError as exc:
                raise SpoolIOError(f"cannot write into {self.layout.tmp}: {exc.strerror or exc}") from None
            finally:
                for fd in fds:
                    os.close(fd)
            return
        self._join()
        if self._error is not None:
            raise SpoolIOError(f"cannot write into {self.layout.tmp}: syncfs: {os.strerror(self._error)}")
        if self._synced != len(self.m.names):  # never: the last sync began after the last write
            raise SpoolIOError(
                f"cannot write into {self.layout.tmp}: {len(self.m.names) - self._synced} files not synced"
            )

    def done(self) -> None:
        """No more files: the sync thread begins its last sync now (the caller may do other work meanwhile)."""
        if self._queue:
            self._burst()
        if self._thread is not None and not self._stop:
            self._stop = True
            self._kick.set()

    def _join(self) -> None:
        """Wait for the sync thread's last sync (begun after the last write)."""
        if self._thread is not None:
            self.done()
            self._thread.join()

    def commit(self, items: Sequence[tuple[str, bytes, bool]], publish: Callable[[_Member], _Member]) -> _Member:
        """Make every file durable, then ``publish`` them as ``items`` (``(event_id, data, keyed)``, in add order).

        ``publish`` is :meth:`writer.GroupCommitter.commit_written` (the
        rename/link into ``pending/`` and its directory fsync, shared with
        concurrent emits of this process): it returns the member (``added``,
        ``existing``) and closes it. On failure raises, having removed every
        tmp file and anything published: none of ``items`` is visible.
        """
        m = self.m
        try:
            self._burst()
            assert len(items) == len(m.names), "one item per added file"
            m.items = items
            self._sync()
        except BaseException:
            self.abort()
            raise
        return publish(m)

    def abort(self) -> None:
        """Remove every tmp file written so far (after the sync thread has stopped). Idempotent."""
        if self.m.tfd < 0:
            return  # committed or aborted already: the names are not ours any more
        self._queue = []  # never written now
        try:
            self._join()
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds = []
            _discard(self.m)
            self._close()

    def _close(self) -> None:
        _close_member(self.m)

    def __len__(self) -> int:
        return len(self.m.names)


__all__ = ["TmpStream"]
