"""A derived index of handled events, for tail/correlate/replay/prune/status at scale.

Files are the truth; this SQLite database (``<spool>/index/events.sqlite``,
WAL mode) only makes questions fast and can always be rebuilt from the files
(``poetctl fsck --repair``). The daemon records every event it moves to
processed/ or dead/; commands that move events (replay, dead retry, prune)
update it. Pending and in-flight events are not indexed: readers list those
directories directly (they are small while a daemon keeps up).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ...errors import PermissionDenied
from .layout import DIR_MODE, FILE_MODE, SpoolLayout
from .sqlitelib import sqlite3

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ...event import Event  # only for annotations: status imports this module, and no events

SCHEMA_VERSION = 1
Row = tuple[str, float, str, str, str, str | None, str | None, str]

_DDL = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    topic TEXT NOT NULL,
    source TEXT NOT NULL,
    correlation_id TEXT,
    causation_id TEXT,
    state TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_state_ts ON events (state, ts);
CREATE INDEX IF NOT EXISTS events_corr ON events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_cause ON events (causation_id) WHERE causation_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Rows per state, so that ``status`` reads a few rows instead of counting a million (~30 ms of
# CPU). Every write method below keeps them in the transaction of its change (so a SIGKILL cannot
# leave them behind): one lookup of the batch's old states and a few upserts per batch, ~0.5 us a
# row. Triggers would do it for any writer, but cost 5-9 us a row of the daemon's indexer and of
# prune's deletes (measured): a program that writes ``events`` without these methods (an older
# poetctl daemon still running after an upgrade, a sqlite3 shell) leaves the counts off until
# ``poetctl fsck --repair`` recounts them (fsck reports ``index_counts``).
_COUNTS_DDL = "CREATE TABLE counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID"
# ids must be distinct (a join: no ephemeral table for an IN list)
_OLD_STATES = "SELECT e.state, count(*) FROM json_each(?) AS j JOIN events AS e ON e.id = j.value GROUP BY e.state"
_ADD = "INSERT INTO counts VALUES (?, ?) ON CONFLICT (state) DO UPDATE SET n = n + excluded.n"


def row_of(event: Event, state: str) -> Row:
    return (
        event.id,
        event.timestamp,
        event.type,
        event.topic,
        event.source,
        event.correlation_id,
        event.causation_id,
        state,
    )


class Index:
    """One connection to a spool's index. Not shared between threads; open one per thread.

    ``create=True`` (the daemon, ``fsck --repair``'s rebuild) opens it for
    writing, creating it if needed. ``create=False`` opens an existing index
    read-only (see :func:`connect_readonly`), so read commands never change a
    file of the spool; the first write (``put``, ``set_state``, ``delete``)
    reopens it for writing, so commands that move events need not decide up
    front (``replay --dry-run`` never writes, ``replay`` does).
    """

    def __init__(self, layout: SpoolLayout, *, create: bool = True) -> None:
        self.layout = layout
        self.dir = layout.root / "index"
        self.path = self.dir / "events.sqlite"
        self.writable = False
        self.counting = False  # keeps the counts table (a writable connection always does)
        if create:
            self.db = self._open_writable(create=True)
        else:
            self.db = connect_readonly(self.path)

    def _open_writable(self, *, create: bool) -> sqlite3.Connection:
        if create and not self.path.exists():
            os.makedirs(self.dir, DIR_MODE, exist_ok=True)
            try:
                # Create it ourselves so the mode is 0640 whatever the umask (sqlite uses 0644).
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
            except FileExistsError:
                pass
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_DDL)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            if not _has_counts(db):
                install_counts(db)
            self.counting = True
        except sqlite3.Error as exc:
            db.close()
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (3, 8) or not os.access(self.path, os.W_OK):  # SQLITE_PERM, SQLITE_READONLY
                raise PermissionDenied(f"cannot write the index {self.path}: {exc}") from None
            raise
        self.writable = True
        return db

    def for_writing(self) -> None:
        """Reopen a read-only connection for writing (once, at the first write)."""
        if not self.writable:
            db = self._open_writable(create=False)
            self.db.close()
            self.db = db

    @classmethod
    def open_existing(cls, layout: SpoolLayout) -> Index | None:
        """The index, opened read-only, if it exists (readers never create one); None also while it is
        still being made (a starting daemon creates the file empty, then the schema: a reader starting in
        between finds no ``events`` table, which means "no index yet", not a failure)."""
        if not os.path.lexists(layout.root / "index" / "events.sqlite"):
            return None
        idx = cls(layout, create=False)
        try:
            made = idx.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
        except BaseException:
            idx.close()
            raise
        if made is None:
            idx.close()
            return None
        return idx

    def close(self) -> None:
        self.db.close()

    # -- writes ------------------------------------------------------------------------
    def put(self, rows: Sequence[Row]) -> None:
        """Insert or replace rows (id is the key) in one transaction."""
        if not rows:
            return
        with self._tx():
            # One lookup of the batch's ids for the states they leave (a savepoint to insert new rows
            # first and look up only on a clash cost more: SQLite journals every page it touches).
            old = self._states_of(list({r[0]: None for r in rows}))
            self.db.executemany("INSERT OR REPLACE INTO events VALUES (?,?,?,?,?,?,?,?)", rows)
            self._count(_per_state({r[0]: r[7] for r in rows}.values()), old)  # an id's last row wins

    def set_state(self, ids: Iterable[str], state: str) -> None:
        ids = list(dict.fromkeys(ids))
        with self._tx():
            old = self._states_of(ids)
            self.db.executemany("UPDATE events SET state=? WHERE id=?", ((state, i) for i in ids))
            self._count({state: sum(old.values())}, old)

    def delete(self, ids: Iterable[str]) -> None:
        self.delete_batch(list(ids))

    def delete_batch(self, ids: Sequence[str]) -> None:
        """Delete rows by id, in one statement, not one step per id (prune's batches).

        Each step of an ``executemany`` releases and retakes the GIL, which prune's unlink
        threads keep busy; one ``json_each`` statement deletes the batch in a single step,
        and returns the deleted rows' states for the counts (no second lookup).
        """
        if not ids:
            return
        listed = _json_list(ids)
        with self._tx():
            try:
                gone = self.db.execute(
                    "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?)) RETURNING state", (listed,)
                ).fetchall()
                self._count({}, _per_state(r[0] for r in gone))
                return
            except sqlite3.OperationalError:  # an SQLite without JSON functions or RETURNING (< 3.35)
                pass
            old = self._states_of(list(dict.fromkeys(ids)))
            self.db.executemany("DELETE FROM events WHERE id=?", ((i,) for i in ids))
            self._count({}, old)

    def _states_of(self, ids: Sequence[str]) -> dict[str, int]:
        """How many of ``ids`` have a row, per state (inside the write's transaction)."""
        if not self.counting or not ids:
            return {}
        try:
            return dict(self.db.execute(_OLD_STATES, (_json_list(ids),)).fetchall())
        except sqlite3.OperationalError:  # no JSON functions: one lookup per id
            out: dict[str, int] = {}
            for i in ids:
                for (state,) in self.db.execute("SELECT state FROM events WHERE id=?", (i,)):
                    out[state] = out.get(state, 0) + 1
            return out

    def _count(self, new: dict[str, int], old: dict[str, int]) -> None:
        """Apply a write's change (rows now in each state less rows it took from each) to the counts."""
        if not self.counting:
            return
        delta = dict(new)
        for state, n in old.items():
            delta[state] = delta.get(state, 0) - n
        self.db.executemany(_ADD, [(state, d) for state, d in delta.items() if d])

    def _tx(self) -> _Tx:
        self.for_writing()
        return _Tx(self.db)

    # -- reads ---------------------------------------------------------------------------
    def get(self, event_id: str) -> Row | None:
        return self.db.execute("SELECT * FROM events WHERE id=?", (event_id,)).fetchone()  # type: ignore[no-any-return]

    def by_correlation(self, correlation_id: str) -> list[Row]:
        return self.db.execute("SELECT * FROM events WHERE correlation_id=?", (correlation_id,)).fetchall()

    def by_causation(self, cause_id: str) -> list[Row]:
        return self.db.execute("SELECT * FROM events WHERE causation_id=?", (cause_id,)).fetchall()

    def counts(self) -> dict[str, int]:
        """Events per state: the counts table if the index has it, else an index scan (~0.1 s per million rows)."""
        got = stored_counts(self.db)
        if got is not None:
            return got
        return dict(self.db.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())

    def newest(
        self,
        states: Sequence[str],
        since: float | None = None,
        until: float | None = None,
        batch: int = 1000,
        first: int | None = None,
    ) -> Iterator[Row]:
        """Rows in the given states, newest first, streamed in batches.

        ``first``: the size of the first batch (``tail -n 10`` wants ~10 rows, and fetching
        1,000 costs it ~2 ms); each next batch is twice the last, up to ``batch``.
        """
        marks = ",".join("?" * len(states))
        hi = until if until is not None else float("inf")
        lo = since if since is not None else float("-inf")
        last_ts, last_id = hi, "\uffff"
        size = batch if first is None else max(1, min(first, batch))
        while True:
            rows = self.db.execute(
                f"SELECT * FROM events WHERE state IN ({marks}) AND ts >= ? "
                "AND (ts < ? OR (ts = ? AND id < ?)) ORDER BY ts DESC, id DESC LIMIT ?",
                (*states, lo, last_ts, last_ts, last_id, size),
            ).fetchall()
            yield from rows
            if len(rows) < size:
                return
            last_ts, last_id = rows[-1][1], rows[-1][0]
            size = min(size * 2, batch)

    def older_than(self, state: str, cutoff: float, batch: int = 10000) -> Iterator[list[str]]:
        """Ids in ``state`` with ts < cutoff, oldest first, in batches (for prune).

        Paged by (ts, id) so each page is one range scan of the (state, ts) index.
        """
        last_ts, last_id = float("-inf"), ""
        while True:
            rows = self.db.execute(
                "SELECT id, ts FROM events WHERE state=? AND ts < ? AND (ts > ? OR (ts = ? AND id > ?)) "
                "ORDER BY ts, id LIMIT ?",
                (state, cutoff, last_ts, last_ts, last_id, batch),
            ).fetchall()
            if not rows:
                return
            yield [r[0] for r in rows]
            last_id, last_ts = rows[-1]


def _has_counts(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'counts'").fetchone() is not None


def install_counts(db: sqlite3.Connection) -> None:
    """Add the per-state counts to an index made without them, filled in the same transaction (one
    scan: ~0.2 s per million rows, once per index), so they are exact from the start."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if not _has_counts(db):  # another writer may have added them while this one waited
            db.execute(_COUNTS_DDL)
            db.execute("INSERT INTO counts SELECT state, count(*) FROM events GROUP BY state")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def recount(db: sqlite3.Connection) -> None:
    """Set the counts from the rows (``fsck --repair``), in one write transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DELETE FROM counts")
        db.execute("INSERT INTO counts SELECT state, count(*) FROM events GROUP BY state")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _per_state(states: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for state in states:
        out[state] = out.get(state, 0) + 1
    return out


def _json_list(ids: Sequence[str]) -> str:
    import orjson  # lazily: readers import this module at start-up

    return orjson.dumps(list(ids)).decode()


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


# What urllib.parse.quote leaves as it is (its default safe="/"); everything else is %XX.
_URI_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


def uri_path(path: Path | str) -> str:
    """``urllib.parse.quote(path)`` for an SQLite URI, without importing urllib.parse (start-up: ~11M instructions).

    Works on the path's bytes (``os.fsencode``), so a name that is not UTF-8
    is quoted byte for byte where ``quote`` would raise.
    """
    return "".join(chr(b) if b in _URI_SAFE else f"%{b:02X}" for b in os.fsencode(path))


def connect_readonly(path: Path, timeout: float = 60.0) -> sqlite3.Connection:
    """A read-only connection to an existing index that writes nothing, not even ``-wal``/``-shm`` files.

    SQLite's ``mode=ro`` alone is not enough: on a WAL-mode database whose
    ``-wal`` and ``-shm`` files are absent (no connection open, e.g. no daemon
    running) it creates them, and leaves them behind. So:

    * a rollback-journal database (e.g. the committed ``spool_example``): ``mode=ro``;
    * WAL mode with ``-wal`` and ``-shm`` present (a daemon has it open, or
      died): ``mode=ro``, which reads the WAL through the shared memory and so
      sees every committed row while a daemon writes;
    * WAL mode without them: ``immutable=1``. Nothing is in a WAL, so the
      database file is the whole truth; SQLite then takes no locks and creates
      no files. A daemon starting meanwhile writes its rows to a new WAL,
      which this connection does not see (the index only narrows what readers
      look at; they read and verify the files themselves).

    If ``mode=ro`` fails (the ``-shm`` belongs to another user and is not
    readable, the directory is read-only and a WAL needs recovery, a hot
    journal needs a rollback) the database is opened ``immutable=1``: what is
    in the database file, without what only the WAL holds. A path that is not
    a regular file (a link) is refused with :class:`sqlite3.DatabaseError`.
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise sqlite3.DatabaseError(f"{path} is not a regular file; not following it")
    with open(path, "rb") as fh:
        head = fh.read(20)
    wal = len(head) == 20 and head[18] == 2  # file format read version 2: WAL mode
    live = os.path.lexists(f"{path}-wal") and os.path.lexists(f"{path}-shm")
    uri = "file:" + uri_path(path)
    modes = ["mode=ro", "mode=ro&immutable=1"] if not wal or live else ["mode=ro&immutable=1"]
    for n, mode in enumerate(modes, 1):
        db = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            db.close()
            if n == len(modes):
                raise
            continue
        return db
    raise AssertionError("unreachable")


def stored_counts(db: sqlite3.Connection) -> dict[str, int] | None:
    """Rows per state from the counts table (states with none left out); None if this index has no
    counts (made before them, and not opened for writing since) or they cannot be right (negative)."""
    try:
        rows = db.execute("SELECT state, n FROM counts").fetchall()
    except sqlite3.OperationalError:
        return None  # no such table
    if any(n < 0 for _, n in rows):
        return None
    return {state: n for state, n in rows if n}


def index_path(layout: SpoolLayout) -> Path:
    return layout.root / "index" / "events.sqlite"


def rows_from_files(layout: SpoolLayout, states: Sequence[str] = ("processed", "dead")) -> Iterator[Row]:
    """Rebuild source: every readable event in ``states`` (damaged files skipped)."""
    import orjson

    for state in states:
        d: Path = getattr(layout, state)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for n in names:
            if not n.endswith(".json") or n.startswith("."):
                continue
            try:
                with open(d / n, "rb") as fh:
                    e: dict[str, Any] = orjson.loads(fh.read())
                yield envelope_row(e, state)
            except (OSError, ValueError, KeyError, TypeError):
                continue


def envelope_row(e: dict[str, Any], state: str) -> tuple[Any, ...]:
    """The index row of a parsed envelope (KeyError if a required field is missing)."""
    return (
        e["id"],
        e["timestamp"],
        e["type"],
        e["topic"],
        e["source"],
        e.get("correlation_id"),
        e.get("causation_id"),
        state,
    )
