"""The index after a crash: a restarted daemon reconciles the index with what it and its dead
predecessors (and their movers) filed, so ``fsck`` finds nothing and ``status``/``tail`` count
every event - without a full listing when the last run ended cleanly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    Daemons,
    count_json,
    emit_metrics,
    events_dir,
    inflight_ids,
    run_cli,
    run_once,
    wait_for,
    write_config,
)

EVENTS = 6000
KILLS = 6
STEP = 400  # events handled by each daemon before it is killed


def _marks(sp: Path) -> list[str]:
    db = sqlite3.connect(sp / "index" / "events.sqlite")
    try:
        return [k for (k,) in db.execute("SELECT key FROM meta WHERE key LIKE 'daemon:%'")]
    finally:
        db.close()


@pytest.mark.parametrize("workers", [1, 2], ids=["inline", "threads"])
def test_index_is_whole_after_sigkills_and_one_clean_run(
    tmp_path: Path, sp: Path, daemons: Daemons, workers: int
) -> None:
    """SIGKILLs mid-drain, then one clean --once: fsck reports nothing; status and tail count every event."""
    ids = emit_metrics(sp, EVENTS)
    cfg = write_config(tmp_path, workers=workers, rescan_interval=30.0)
    env = {"EFFECTS_FILE": str(tmp_path / "effects.txt"), "SLEEP_S": "0.0005"}
    processed = events_dir(sp, "processed")
    interrupted = 0
    for _ in range(KILLS):
        before = count_json(processed)
        d = daemons.start(sp, cfg, env=env)
        wait_for(lambda before=before: count_json(processed) >= before + STEP, "progress", procs=[d])
        left = count_json(events_dir(sp, "pending")) + len(inflight_ids(sp))
        d.kill()
        interrupted += left > 0
    assert interrupted >= KILLS - 1, f"only {interrupted} of {KILLS} kills interrupted work"
    assert _marks(sp), "a killed daemon leaves its running mark in the index (earlier ones were reconciled)"
    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode == 0, r.stderr
    assert _marks(sp) == [], "a clean run removes its own mark and those of the daemons it reconciled for"
    r = run_cli(tmp_path, "fsck", "--spool", sp, "-o", "json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["problems"] == [], report["summary"]
    st = run_cli(tmp_path, "status", "--spool", sp, "-o", "json")
    assert json.loads(st.stdout)["counts"]["processed"] == EVENTS
    t = run_cli(tmp_path, "tail", "--spool", sp, "--state", "processed", "-n", str(EVENTS + 10), "-o", "jsonl")
    assert t.returncode == 0, t.stderr
    assert {json.loads(ln)["id"] for ln in t.stdout.splitlines()} == set(ids)


def test_rows_lost_without_a_crash_mark_are_left_to_fsck(tmp_path: Path, sp: Path) -> None:
    """A clean start does not list processed/: only a crash mark triggers reconciliation (start-up stays cheap)."""
    emit_metrics(sp, 50)
    cfg = write_config(tmp_path)
    env = {"EFFECTS_FILE": str(tmp_path / "effects.txt")}
    assert run_once(tmp_path, sp, cfg, env=env).returncode == 0
    db = sqlite3.connect(sp / "index" / "events.sqlite")
    (victim,) = db.execute("SELECT id FROM events LIMIT 1").fetchone()
    db.execute("DELETE FROM events WHERE id=?", (victim,))
    db.commit()
    assert run_once(tmp_path, sp, cfg, env=env).returncode == 0
    assert db.execute("SELECT count(*) FROM events WHERE id=?", (victim,)).fetchone() == (0,)
    # A stale mark of a daemon that is gone: the next start reconciles.
    db.execute("INSERT INTO meta VALUES ('daemon:host.999999999.1', 'running')")
    db.commit()
    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode == 0, r.stderr
    assert db.execute("SELECT state FROM events WHERE id=?", (victim,)).fetchone() == ("processed",)
    assert any("index reconciled" in ln and '"added":1' in ln for ln in r.stderr.splitlines()), r.stderr
    db.close()
