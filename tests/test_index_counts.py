"""The index's per-state counts (what ``status`` reads instead of counting a million rows): exact after
every kind of change poetctl makes, across SIGKILL, checked and repaired by fsck, and absent-but-harmless
in an index made before them."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon_helpers.harness import clean_env, execution_payload, ids_in, retry_due, run_cli, run_once, write_config
from daemon_helpers.spool import put_event

from poetctl import EventRouter
from poetctl.backends.fs.index import Index, stored_counts
from poetctl.spool import SpoolLayout

DAY = 86400.0
OLD_DDL = """
CREATE TABLE events (id TEXT PRIMARY KEY, ts REAL NOT NULL, type TEXT NOT NULL, topic TEXT NOT NULL,
    source TEXT NOT NULL, correlation_id TEXT, causation_id TEXT, state TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX events_state_ts ON events (state, ts);
CREATE INDEX events_corr ON events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX events_cause ON events (causation_id) WHERE causation_id IS NOT NULL;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def db_path(sp: Path) -> Path:
    return sp / "index" / "events.sqlite"


def counts(sp: Path) -> tuple[dict[str, int] | None, dict[str, int]]:
    """(the stored counts, the rows counted) of the spool's index, read in one snapshot."""
    db = sqlite3.connect(db_path(sp), isolation_level=None)
    try:
        db.execute("BEGIN")
        stored = stored_counts(db)
        actual = dict(db.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
        db.execute("COMMIT")
        return stored, actual
    finally:
        db.close()


def assert_exact(sp: Path) -> dict[str, int]:
    stored, actual = counts(sp)
    assert stored == actual, (stored, actual)
    return actual


def status_counts(tmp_path: Path, sp: Path) -> dict[str, Any]:
    r = run_cli(tmp_path, "status", "--spool", sp, "-o", "json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def fsck(tmp_path: Path, sp: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = run_cli(tmp_path, "fsck", "--spool", sp, "-o", "json", *args)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def rows(n: int, state: str, start: int = 0) -> list[tuple[Any, ...]]:
    return [
        (f"e{i:08d}", float(i), "system.metrics", "system/metrics", "t", None, None, state) for i in range(start, n)
    ]


def test_counts_exact_after_put_replace_set_state_delete_and_batch_delete(sp: Path) -> None:
    """Each write of the index (insert, replace in another state, state change, delete, prune's batch delete)
    keeps the stored counts equal to the rows."""
    idx = Index(SpoolLayout(sp))
    try:
        idx.put(rows(50, "processed"))
        assert assert_exact(sp) == {"processed": 50}
        idx.put(rows(10, "dead"))  # replay's put: the same ids, another state
        assert assert_exact(sp) == {"processed": 40, "dead": 10}
        idx.put(rows(5, "dead"))  # replaced in the same state
        assert assert_exact(sp) == {"processed": 40, "dead": 10}
        idx.put([*rows(52, "processed", 50), *rows(51, "dead", 50)])  # one id twice in a batch: the last wins
        assert assert_exact(sp) == {"processed": 41, "dead": 11}
        idx.delete(["e00000050", "e00000051"])
        idx.set_state(["e00000020", "e00000021", "e00000003", "missing"], "dead")
        assert assert_exact(sp) == {"processed": 38, "dead": 12}
        idx.set_state(["e00000001"], "processed")
        idx.delete(["e00000001", "e00000002", "missing"])
        assert assert_exact(sp) == {"processed": 38, "dead": 10}
        idx.delete_batch([f"e{i:08d}" for i in range(10, 30)])
        assert assert_exact(sp) == {"processed": 20, "dead": 8}
        idx.delete_batch([f"e{i:08d}" for i in range(50)])
        assert assert_exact(sp) == {}
    finally:
        idx.close()


def test_counts_exact_through_daemon_dead_retry_and_prune(tmp_path: Path, sp: Path) -> None:
    """Events published, claimed and completed by a daemon, dead-lettered, retried and pruned: the stored
    counts match the rows, and status reports them."""
    cfg = write_config(tmp_path)
    fail = tmp_path / "fail.txt"
    env = {"EFFECTS_FILE": str(tmp_path / "effects.txt"), "FAIL_IDS_FILE": str(fail)}
    router = EventRouter(spool=sp)
    ok = [router.emit("function.execution", execution_payload(f"f{i}")) for i in range(6)]
    doomed = router.emit("function.execution", execution_payload("fd"))
    fail.write_text(f"{doomed} 99\n")
    old = [put_event(sp, "processed", time.time() - 40 * DAY + i) for i in range(4)]
    codes = []
    for _ in range(10):
        codes.append(run_once(tmp_path, sp, cfg, env=env).returncode)
        if codes[-1] != 75:
            break
        deadline = time.monotonic() + 60
        while not retry_due(sp, doomed) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert ids_in(sp, "dead") == {doomed}, codes
    assert assert_exact(sp) == {"processed": len(ok) + len(old), "dead": 1}
    assert status_counts(tmp_path, sp)["counts"]["processed"] == len(ok) + len(old)

    r = run_cli(tmp_path, "dead", "retry", "--id", doomed, "--spool", sp)
    assert r.returncode == 0, r.stderr
    assert assert_exact(sp) == {"processed": len(ok) + len(old)}

    r = run_cli(tmp_path, "prune", "--spool", sp)
    assert r.returncode == 0, r.stderr
    assert assert_exact(sp) == {"processed": len(ok)}
    doc = status_counts(tmp_path, sp)
    assert doc["counts"]["processed"] == len(ok) and doc["counts"]["pending"] == 1


WRITER = r"""
import sys
from poetctl.backends.fs.index import Index
from poetctl.spool import SpoolLayout
idx = Index(SpoolLayout(sys.argv[1]))
n = 0
while True:
    batch = [(f"k{n + i:09d}", float(n + i), "system.metrics", "system/metrics", "t", None, None, "processed")
             for i in range(20000)]
    idx.put(batch)
    idx.set_state([r[0] for r in batch[::3]], "dead")
    idx.delete_batch([r[0] for r in batch[::7]])
    n += len(batch)
    print(n, flush=True)
"""


def test_counts_exact_after_sigkill_mid_batch(tmp_path: Path, sp: Path) -> None:
    """A writer killed with SIGKILL while it writes batches leaves counts equal to the rows it committed."""
    Index(SpoolLayout(sp)).close()
    for round_ in range(3):
        p = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(sp)], stdout=subprocess.PIPE, text=True, env=clean_env(), cwd=tmp_path
        )
        assert p.stdout is not None
        first = p.stdout.readline()  # one batch committed: the writer is busy with the next
        assert first.strip().isdigit(), first
        p.send_signal(signal.SIGKILL)
        p.wait(60)
        p.stdout.close()
        stored, actual = counts(sp)  # opening recovers the WAL, as the next daemon would
        assert stored == actual and actual, (round_, stored, actual)
        idx = Index(SpoolLayout(sp))  # the next round starts over its ids: replaces, re-deletes
        idx.close()


def make_old_index(sp: Path, processed: int, dead: int) -> None:
    """An index as made before the counts existed (no table, no triggers), with rows."""
    path = db_path(sp)
    path.parent.mkdir(exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(OLD_DDL)
    db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?)", rows(processed, "processed"))
    db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?)", rows(processed + dead, "dead", processed))
    db.close()


def test_old_index_without_counts_status_unchanged_and_upgraded_on_first_write(tmp_path: Path, sp: Path) -> None:
    """An index made before the counts: status counts it (read-only: no table added), and the first
    writable open adds counts equal to the rows, after which status says the same."""
    make_old_index(sp, 30, 4)
    before = status_counts(tmp_path, sp)
    assert before["counts"]["processed"] == 30 and before["counts_source"]["processed"] == "index"
    assert counts(sp)[0] is None, "status never writes to the index"
    Index(SpoolLayout(sp)).close()
    assert assert_exact(sp) == {"processed": 30, "dead": 4}
    after = status_counts(tmp_path, sp)
    for doc in (before, after):
        doc.pop("at")
    assert after == before
    _code, doc = fsck(tmp_path, sp)
    assert "index_counts" not in {p["kind"] for p in doc["problems"]}, doc["problems"]


def test_status_reads_the_stored_count(tmp_path: Path, sp: Path) -> None:
    """status takes processed from the counts table (no scan of the rows): a changed figure shows."""
    Index(SpoolLayout(sp)).put(rows(5, "processed"))
    db = sqlite3.connect(db_path(sp), isolation_level=None)
    db.execute("UPDATE counts SET n = 123456 WHERE state = 'processed'")
    db.close()
    assert status_counts(tmp_path, sp)["counts"]["processed"] == 123456


def test_fsck_reports_and_repairs_counts_a_foreign_writer_left_off(tmp_path: Path, sp: Path) -> None:
    """Rows written around poetctl's index methods (a sqlite3 shell, an older daemon) leave the counts off:
    fsck reports index_counts (exit 1, nothing changed); --repair recounts; poetctl's next writes keep them."""
    ids = [put_event(sp, "processed") for _ in range(3)] + [put_event(sp, "dead")]
    db = sqlite3.connect(db_path(sp), isolation_level=None)
    db.execute("UPDATE events SET state = 'dead' WHERE id = ?", (ids[0],))  # as an older poetctl would
    db.close()
    (sp / "events" / "processed" / f"{ids[0]}.json").rename(sp / "events" / "dead" / f"{ids[0]}.json")
    (sp / "events" / "dead" / f"{ids[0]}.error").write_text((sp / "events" / "dead" / f"{ids[3]}.error").read_text())
    code, doc = fsck(tmp_path, sp)
    assert code == 1 and [p["kind"] for p in doc["problems"]] == ["index_counts"], doc["problems"]
    assert counts(sp)[0] == {"processed": 3, "dead": 1}, "fsck without --repair changes nothing"
    code, doc = fsck(tmp_path, sp, "--repair")
    assert code == 0 and all(p["repaired"] for p in doc["problems"]), doc["problems"]
    assert assert_exact(sp) == {"processed": 2, "dead": 2}
    assert status_counts(tmp_path, sp)["counts"]["processed"] == 2
    code, doc = fsck(tmp_path, sp)
    assert code == 0 and doc["problems"] == [], doc["problems"]
    idx = Index(SpoolLayout(sp))
    idx.delete([ids[1]])
    idx.close()
    assert assert_exact(sp) == {"processed": 1, "dead": 2}
