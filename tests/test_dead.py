"""poetctl dead list|show|retry|purge on real spools and a real daemon: what is listed, what a
retry resets, what a purge deletes (and never: links, files outside the spool)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    Daemons,
    events_dir,
    execution_payload,
    ids_in,
    ok_counts,
    read_effects,
    read_json,
    retry_due,
    run_cli,
    run_once,
    wait_for,
    write_config,
)
from daemon_helpers.spool import index_rows, lines, put_event

from poetctl import EventRouter


def dead(tmp_path: Path, sp: Path, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    if stdin is None:
        return run_cli(tmp_path, "dead", *args, "--spool", sp, env={"COLUMNS": "250"})
    import subprocess
    import sys

    from daemon_helpers.harness import clean_env

    return subprocess.run(
        [sys.executable, "-m", "poetctl", "dead", *args, "--spool", str(sp)],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def three_dead(sp: Path) -> tuple[str, str, str]:
    """Two dead metrics (one a day old) and one dead execution, with .error records and index rows."""
    now = time.time()
    old = put_event(sp, "dead", now - 86400)
    new = put_event(sp, "dead", now - 60)
    ex = put_event(
        sp, "dead", now - 30, event_type="function.execution", payload=execution_payload("fa"), correlation_id="c-1"
    )
    return old, new, ex


def test_list_shows_reason_attempts_error_and_dead_at(tmp_path: Path, sp: Path) -> None:
    """dead list (JSON lines in a pipe) gives id, type, reason, attempts, last error and dead_at per letter."""
    old, new, ex = three_dead(sp)
    r = dead(tmp_path, sp, "list")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(ln) for ln in lines(r.stdout)]
    assert [x["id"] for x in rows] == [old, new, ex], "oldest dead_at first"
    assert rows[2]["type"] == "function.execution" and rows[2]["correlation_id"] == "c-1"
    assert all(
        x["reason"] == "attempts_exhausted"
        and x["attempts"] == 3
        and x["error"] == "RuntimeError: boom"
        and isinstance(x["dead_at"], float)
        for x in rows
    )
    t = dead(tmp_path, sp, "list", "-o", "table", "--type", "function.*")
    assert t.returncode == 0 and ex in t.stdout and old not in t.stdout and "attempts_exhausted" in t.stdout


def test_list_selectors_and_empty_queue_exit_codes(tmp_path: Path, sp: Path) -> None:
    """An empty queue lists nothing with exit 0; selectors that match nothing exit 1."""
    r = dead(tmp_path, sp, "list")
    assert r.returncode == 0 and r.stdout == ""
    three_dead(sp)
    r = dead(tmp_path, sp, "list", "--since", "10m")
    assert r.returncode == 0 and len(lines(r.stdout)) == 2
    r = dead(tmp_path, sp, "list", "--topic", "poet/nothing/here")
    assert r.returncode == 1 and "no dead letter matched" in r.stderr


def test_show_prints_event_and_error_and_names_missing_ids(tmp_path: Path, sp: Path) -> None:
    """dead show prints {"event", "error"}; an unknown id is 1 naming where it is; a bad id is 2."""
    old, _, _ = three_dead(sp)
    r = dead(tmp_path, sp, "show", old)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["event"]["id"] == old and doc["error"]["reason"] == "attempts_exhausted"
    pending = EventRouter(spool=sp).emit("system.metrics", {"service": "t", "metrics": {"n": 1}})
    r = dead(tmp_path, sp, "show", pending)
    assert r.returncode == 1 and "it is in events/pending/" in r.stderr
    r = dead(tmp_path, sp, "show", "0194f0c2-0000-7000-8000-000000000000")
    assert r.returncode == 1 and "no such event" in r.stderr
    r = dead(tmp_path, sp, "show", "../../etc/passwd")
    assert r.returncode == 2 and "not an event id" in r.stderr


def test_retry_then_daemon_processes_with_fresh_attempts(tmp_path: Path, sp: Path) -> None:
    """A handler failing max_attempts times dead-letters the event; dead retry + daemon then processes it."""
    cfg = write_config(tmp_path)
    effects = tmp_path / "effects.txt"
    fail = tmp_path / "fail.txt"
    eid = EventRouter(spool=sp).emit("function.execution", execution_payload("fa"))
    fail.write_text(f"{eid} 3\n")
    env = {"EFFECTS_FILE": str(effects), "FAIL_IDS_FILE": str(fail)}
    # --once makes one attempt per run and hands a retrying event back (exit 75): run until it is dead.
    codes = []
    for _ in range(10):
        codes.append(run_once(tmp_path, sp, cfg, env=env).returncode)
        if codes[-1] != 75:
            break
        wait_for(lambda: retry_due(sp, eid), f"the saved retry time of {eid} to pass")
    assert codes[-1] == 1, codes
    assert ids_in(sp, "dead") == {eid} and index_rows(sp)[eid] == "dead"
    assert [e.ok for e in read_effects(effects)] == [False, False, False]

    r = dead(tmp_path, sp, "retry", "--id", eid)
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout) == [eid]
    assert ids_in(sp, "pending") == {eid} and not (events_dir(sp, "dead") / f"{eid}.error").exists()
    mark = read_json(events_dir(sp, "pending") / f"{eid}.json")["metadata"]["replayed"]
    assert mark["from"] == "dead" and mark["error"]["attempts"] == 3 and "planned failure" in mark["error"]["error"]
    assert eid not in index_rows(sp)

    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == {eid} and ids_in(sp, "dead") == set()
    assert ok_counts(effects)[eid] == 1
    assert index_rows(sp)[eid] == "processed"


def test_retry_while_daemon_runs_and_stdin_ids(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """dead list -o jsonl | dead retry --id - hands the letters to a running daemon, each handled once."""
    cfg = write_config(tmp_path)
    effects = tmp_path / "effects.txt"
    d = daemons.start(sp, cfg, env={"EFFECTS_FILE": str(effects)})
    ids = [
        put_event(sp, "dead", event_type="function.execution", payload=execution_payload(f"f{i}", i)) for i in range(20)
    ]
    listed = dead(tmp_path, sp, "list", "-o", "jsonl").stdout
    r = dead(tmp_path, sp, "retry", "--id", "-", stdin=listed)
    assert r.returncode == 0, r.stderr
    assert set(lines(r.stdout)) == set(ids)
    wait_for(lambda: ids_in(sp, "processed") == set(ids), "retried letters to be processed", procs=[d])
    assert d.stop() == 0, d.stderr()
    assert set(ok_counts(effects).values()) == {1} and set(ok_counts(effects)) == set(ids)
    assert os.listdir(events_dir(sp, "dead")) == []


@pytest.mark.parametrize("verb", ["retry", "purge"])
def test_retry_and_purge_need_selectors_or_all(tmp_path: Path, sp: Path, verb: str) -> None:
    """retry and purge without selectors are usage errors (2); with --all on an empty queue, exit 1."""
    r = dead(tmp_path, sp, verb)
    assert r.returncode == 2 and "needs a selector" in r.stderr
    r = dead(tmp_path, sp, verb, "--all")
    assert r.returncode == 1 and "nothing" in r.stderr


def test_purge_dry_run_then_purge_deletes_event_error_and_row(tmp_path: Path, sp: Path) -> None:
    """purge --dry-run only lists; purge deletes the matching .json, .error and index row, nothing else."""
    old, new, ex = three_dead(sp)
    r = dead(tmp_path, sp, "purge", "--until", "1h", "--dry-run")
    assert r.returncode == 0 and lines(r.stdout) == [old]
    assert (events_dir(sp, "dead") / f"{old}.json").exists()
    r = dead(tmp_path, sp, "purge", "--until", "1h")
    assert r.returncode == 0 and lines(r.stdout) == [old]
    names = set(os.listdir(events_dir(sp, "dead")))
    assert names == {f"{new}.json", f"{new}.error", f"{ex}.json", f"{ex}.error"}
    assert set(index_rows(sp)) == {new, ex}


def test_purge_all_removes_orphan_errors_and_never_follows_links(tmp_path: Path, sp: Path) -> None:
    """purge --all removes letters and orphan .error files; a symlink to a file outside is left, target intact."""
    old, _, _ = three_dead(sp)
    (events_dir(sp, "dead") / "0194f0c2-0000-7000-8000-00000000abcd.error").write_text("{}")
    outside = tmp_path / "precious.json"
    outside.write_text("keep me")
    link_id = "0194f0c2-0000-7000-8000-00000000dead"
    os.symlink(outside, events_dir(sp, "dead") / f"{link_id}.json")
    os.symlink(outside, events_dir(sp, "dead") / f"{old}.error.lnk")
    r = dead(tmp_path, sp, "purge", "--all")
    assert r.returncode == 0, r.stderr
    assert "0194f0c2-0000-7000-8000-00000000abcd" in r.stdout and old in r.stdout and link_id not in r.stdout
    assert "not_regular" in r.stderr, "the link is reported as damaged, never followed"
    assert outside.read_text() == "keep me"
    assert set(os.listdir(events_dir(sp, "dead"))) == {f"{link_id}.json", f"{old}.error.lnk"}
    assert index_rows(sp) == {}
