"""Readers (tail, tail -f, correlate, status) while a daemon is still making or upgrading the index.

A starting daemon creates ``index/events.sqlite`` empty (O_EXCL, for its mode), switches it to WAL,
then creates the schema; a first writable open of an older index adds the counts table in one
transaction. A reader starting in any of those windows must read the spool as if there were no index
yet (or use the index as it was), never exit 74: the index is derived data.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import CLI_TIMEOUT, clean_env, cli_argv
from test_tail import finish, follow, following, ids_of, payload

from poetctl import EventRouter
from poetctl.backends.fs.index import Index, row_of
from poetctl.event import Event


def run(cwd: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv(*args), env=clean_env(), cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )


@contextmanager
def empty_file(path: Path) -> Iterator[None]:
    """The daemon has created the file (O_EXCL) but SQLite has not written to it yet."""
    path.parent.mkdir(exist_ok=True)
    path.touch()
    yield


@contextmanager
def wal_without_schema(path: Path) -> Iterator[None]:
    """The daemon's connection has switched the new file to WAL and not yet created a table."""
    path.parent.mkdir(exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA user_version=0")  # a write: page 1 (the WAL header) is in the file/WAL
        yield
    finally:
        db.close()


@contextmanager
def schema_uncommitted(path: Path) -> Iterator[None]:
    """A writer holds a transaction that is creating the schema (the events table not committed)."""
    path.parent.mkdir(exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE events (id TEXT PRIMARY KEY, ts REAL NOT NULL) WITHOUT ROWID")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


HOLDERS = {"empty file": empty_file, "WAL, no schema": wal_without_schema, "schema uncommitted": schema_uncommitted}


@pytest.mark.parametrize("state", list(HOLDERS))
def test_readers_treat_an_index_being_created_as_no_index_yet(tmp_path: Path, state: str) -> None:
    """tail, tail -f, correlate and status read the directories (exit 0, no warning) while the index is being made."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    old = router.emit("system.metrics", payload("system.metrics"), correlation_id="corr-being-made")
    with HOLDERS[state](spool / "index" / "events.sqlite"):
        # The reported failure first: tail -f exited 74 ("no such table: events") before it watched.
        p = follow(tmp_path, spool, "-n", "100", "--count", "2", "-o", "jsonl")
        following(p, spool)
        new = router.emit("system.metrics", payload("system.metrics"))
        code, out, err = finish(p)
        assert (code, ids_of(out), err) == (0, [old, new], "")
        r = run(tmp_path, "--spool", spool, "tail", "-n", "100", "-o", "jsonl")
        assert (r.returncode, ids_of(r.stdout), r.stderr) == (0, [old, new], "")
        r = run(tmp_path, "--spool", spool, "correlate", old, "-o", "json")
        assert r.returncode == 0 and old in r.stdout and r.stderr == "", r.stderr
        r = run(tmp_path, "--spool", spool, "status", "-o", "json")
        assert r.returncode == 0 and '"pending":2' in r.stdout.replace(" ", ""), (r.stdout, r.stderr)


def test_readers_use_an_index_while_its_counts_table_is_being_added(tmp_path: Path) -> None:
    """An index whose counts table a writer is adding (uncommitted) still serves tail -n, tail -f and status."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    old = router.emit("system.metrics", payload("system.metrics"))
    idx = Index(router.layout)
    idx.db.execute("DROP TABLE counts")  # as made before the counts table
    idx.close()
    db = sqlite3.connect(spool / "index" / "events.sqlite", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
        r = run(tmp_path, "--spool", spool, "tail", "-n", "100", "-o", "jsonl")
        assert (r.returncode, ids_of(r.stdout), r.stderr) == (0, [old], "")
        r = run(tmp_path, "--spool", spool, "status", "-o", "json")
        assert r.returncode == 0 and '"pending":1' in r.stdout.replace(" ", ""), (r.stdout, r.stderr)
        p = follow(tmp_path, spool, "-n", "100", "--count", "2", "-o", "jsonl")
        following(p, spool)
        new = router.emit("system.metrics", payload("system.metrics"))
        code, out, err = finish(p)
        assert (code, ids_of(out), err) == (0, [old, new], "")
    finally:
        db.close()


def test_follow_survives_an_index_that_fails_to_read(tmp_path: Path) -> None:
    """tail -f whose index opens but cannot be read (damaged pages) warns once and follows the files, never exits 74."""
    spool = tmp_path / "spool"
    router = EventRouter(spool=spool)
    router.layout.init()
    event = router.emit("system.metrics", payload("system.metrics"))
    found = router.layout.pending / f"{event}.json"
    ev = Event.from_dict(json.loads(found.read_bytes()))
    idx = Index(router.layout)
    # Enough rows (ts now: inside the window -f reads at start) for the table to span many pages.
    row = row_of(ev, "processed")
    idx.put([(f"{i:026d}", *row[1:]) for i in range(3000)])  # type: ignore[misc]
    idx.close()  # last connection: checkpointed, -wal/-shm removed
    path = spool / "index" / "events.sqlite"
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # keep page 1 (the schema), damage the rest
        fh.seek(4096)
        fh.write(b"\xff" * (size - 4096))
    p = follow(tmp_path, spool, "-n", "100", "--count", "2", "-o", "jsonl")
    following(p, spool)
    new = router.emit("system.metrics", payload("system.metrics"))
    code, out, err = finish(p)
    assert (code, ids_of(out)) == (0, [event, new]), err
    assert err.count("index unusable") == 1, err
