"""The daemon's batched index writer: rows of the events it moves, one transaction per batch.

Apart from :mod:`.index` (the index's schema, queries and maintenance) because only
a daemon writes this way; readers and the other commands never import it.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from .index import Index, Row, row_of
from .layout import SpoolLayout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...event import Event


class IndexWriter:
    """Batches index rows and writes them one transaction per batch.

    Threaded (the default, for a daemon with worker threads): ``add`` never
    blocks on SQLite; a background thread writes within ``interval`` seconds.
    Inline (``threaded=False``, for a daemon that handles events on its main
    thread): rows are written by :meth:`maybe_flush` on the caller's thread
    once ``batch`` rows or ``interval`` seconds have accumulated — no thread,
    so no GIL hand-offs per row. Either way the index trails the files by a
    few tens of milliseconds, ``flush`` writes everything added so far, and a
    failure is reported once and never stops handling (the index is derived
    data: fsck rebuilds it).
    """

    def __init__(
        self, layout: SpoolLayout, interval: float = 0.02, *, threaded: bool = True, batch: int = 1024
    ) -> None:
        self.layout = layout
        self.interval = interval
        self.batch = batch
        import threading  # here: the read-only commands open the index without a writer thread

        self._rows: list[Row] = []
        self._lock = threading.Condition()
        self._stop = False
        self._written = 0
        self._added = 0
        self._oldest = 0.0
        self._idx: Index | None = None
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="poetctl-indexer", daemon=True)
            self._thread.start()

    def add(self, event: Event, state: str) -> None:
        row = row_of(event, state)
        with self._lock:
            if not self._rows:
                self._oldest = time.monotonic()
                self._lock.notify_all()
            self._rows.append(row)
            self._added += 1

    def pending(self) -> bool:
        """True while rows wait to be written."""
        return bool(self._rows)

    def maybe_flush(self) -> None:
        """Inline mode: write if a batch is full or the oldest row waited ``interval``."""
        if self._rows and (len(self._rows) >= self.batch or time.monotonic() - self._oldest >= self.interval):
            self._write_pending()

    def _write_pending(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            self._write(rows)
        with self._lock:
            self._written += len(rows)
            self._lock.notify_all()

    def open(self) -> None:
        """Create (or open) the database now, so it exists before any row is due.

        fsck reports handled events without an index; a daemon that created it
        only at its first write left a window where that was true. Failures are
        reported like write failures (the index is derived data).
        """
        self._write([])

    def _write(self, rows: list[Row]) -> None:
        try:
            if self._idx is None:
                self._idx = Index(self.layout)
            self._idx.put(rows)
        except (sqlite3.Error, OSError) as exc:
            if self.error is None:
                self.error = str(exc)
                import sys

                sys.stderr.write(
                    f"poetctl: warning: index update failed ({exc}); 'poetctl fsck --repair' rebuilds it\n"
                )

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._rows and not self._stop:
                    self._lock.wait()
                stop = self._stop
            if not stop:
                # Let a burst accumulate so one transaction carries many rows.
                time.sleep(self.interval)
            self._write_pending()
            if stop:
                with self._lock:
                    if not self._rows:
                        break
        self._close_db()

    def flush(self, timeout: float = 30.0) -> None:
        """Write (or wait until the thread wrote) every row added so far."""
        if self._thread is None:
            self._write_pending()
            return
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._added
            self._lock.notify_all()
            while self._written < target and time.monotonic() < deadline and self._thread.is_alive():
                self._lock.wait(0.05)

    def close(self) -> None:
        if self._thread is None:
            self._write_pending()
            self._close_db()
            return
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(30)

    def _close_db(self) -> None:
        if self._idx is not None:
            self._idx.close()
            self._idx = None
