"""poetctl fsck [--repair] on real spools: every problem kind is found, repaired (or, for the
ones an operator must decide, left and reported), and a daemon at work causes no false alarm."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers.harness import (
    Daemons,
    emit_metrics,
    events_dir,
    heartbeat_of,
    ids_in,
    inflight_ids,
    ok_counts,
    read_json,
    run_cli,
    run_once,
    wait_for,
    write_config,
)
from daemon_helpers.spool import index_rows, put_event

from poetctl.backends.fs.index import Index
from poetctl.backends.fs.owner import HOST
from poetctl.spool import SpoolLayout

DAY = 86400.0


def fsck(tmp_path: Path, sp: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = run_cli(tmp_path, "fsck", "--spool", sp, "-o", "json", *args)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def old(path: Path, seconds: float = 2 * DAY) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def dead_owner() -> str:
    """An owner id on this host whose pid cannot be a live process."""
    return f"{HOST}.{2**22 + 12345}.1"


def test_clean_spool_exits_0(tmp_path: Path, sp: Path) -> None:
    """A spool with only well-formed events (and a matching index) is clean: exit 0, no problems."""
    put_event(sp, "processed")
    put_event(sp, "dead")
    put_event(sp, "pending")
    code, doc = fsck(tmp_path, sp)
    assert code == 0 and doc["clean"] is True and doc["problems"] == []
    assert doc["checked"]["processed"] == 1 and doc["checked"]["dead"] == 1 and doc["checked"]["pending"] == 1


def make_every_problem(tmp_path: Path, sp: Path) -> dict[str, Any]:
    """One instance of every repairable problem kind; returns what the checks need."""
    ev = events_dir
    ctx: dict[str, Any] = {}
    # corrupt_event: a checksum that no longer matches (processed), bad JSON (pending)
    ctx["bad_sum"] = put_event(sp, "processed")
    p = ev(sp, "processed") / f"{ctx['bad_sum']}.json"
    p.write_bytes(p.read_bytes().replace(b'"n":1', b'"n":2'))
    (ev(sp, "pending") / "0194f0c2-0000-7000-8000-0000000000aa.json").write_text("{not json")
    # not_regular: a symlink where events live (to a file outside that must survive)
    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    os.symlink(outside, ev(sp, "pending") / "0194f0c2-0000-7000-8000-0000000000bb.json")
    # stray_file
    (ev(sp, "processed") / "notes.txt").write_text("hello")
    # stale_inflight: an event of a dead owner, with a journal saying one handler finished
    owner = ev(sp, "inflight") / dead_owner()
    owner.mkdir()
    ctx["stale"] = put_event(sp, "pending")
    os.rename(ev(sp, "pending") / f"{ctx['stale']}.json", owner / f"{ctx['stale']}.json")
    (owner / "_journal").write_text("D\t" + json.dumps([ctx["stale"], "effects"]) + "\n")
    (sp / "run" / "daemons").mkdir(exist_ok=True)
    (sp / "run" / "daemons" / f"{dead_owner()}.json").write_text(json.dumps({"last_beat": 1}))
    # stale_heartbeat: a heartbeat of a gone owner without an in-flight dir
    ghost = f"{HOST}.{2**22 + 999}.7"
    (sp / "run" / "daemons" / f"{ghost}.json").write_text(json.dumps({"last_beat": 1}))
    # orphan_tmp: events/tmp and a hidden write_atomic leftover in records/
    (sp / "events" / "tmp" / ".x.1.ab.tmp").write_text("x")
    old(sp / "events" / "tmp" / ".x.1.ab.tmp")
    (sp / "events" / "records" / ".r.json.1.cd.tmp").write_text("x")
    old(sp / "events" / "records" / ".r.json.1.cd.tmp")
    # orphan_error, dead_without_error, bad_error_record
    (ev(sp, "dead") / "0194f0c2-0000-7000-8000-0000000000cc.error").write_text("{}")
    ctx["no_error"] = put_event(sp, "dead")
    os.unlink(ev(sp, "dead") / f"{ctx['no_error']}.error")
    ctx["bad_error"] = put_event(sp, "dead")
    (ev(sp, "dead") / f"{ctx['bad_error']}.error").write_text("[[[")
    # orphan_record, bad_record
    (sp / "events" / "records" / "0194f0c2-0000-7000-8000-0000000000dd.json").write_text('{"done": []}')
    ctx["pending_with_bad_record"] = put_event(sp, "pending")
    (sp / "events" / "records" / f"{ctx['pending_with_bad_record']}.json").write_text("nope")
    # bad_feedback
    (sp / "feedback" / "processed" / "fb.json").write_text("[1, 2]")
    # index drift: a missing row, a row without file, a wrong state
    ctx["missing_row"] = put_event(sp, "processed", index=False)
    ctx["wrong_state"] = put_event(sp, "processed")
    idx = Index(SpoolLayout(sp))
    idx.set_state([ctx["wrong_state"]], "dead")
    idx.put(
        [
            (
                "0194f0c2-0000-7000-8000-0000000000ee",
                1.0,
                "system.metrics",
                "poet/system/metrics",
                "t",
                None,
                None,
                "processed",
            )
        ]
    )
    idx.close()
    ctx["outside"] = outside
    return ctx


REPAIRABLE = {
    "corrupt_event": 2,
    "not_regular": 1,
    "stray_file": 1,
    "stale_inflight": 1,
    "stale_heartbeat": 1,
    "orphan_tmp": 2,
    "orphan_error": 1,
    "dead_without_error": 1,
    "bad_error_record": 1,
    "orphan_record": 1,
    "bad_record": 1,
    "bad_feedback": 1,
    "index_missing_row": 1,
    "index_orphan_row": 1,
    "index_wrong_state": 1,
}


def test_fsck_finds_every_problem_kind_and_repair_fixes_them(tmp_path: Path, sp: Path) -> None:
    """fsck reports each kind (exit 1, nothing changed); --repair fixes each (exit 0); a rerun is clean."""
    ctx = make_every_problem(tmp_path, sp)
    before = sorted(str(p.relative_to(sp)) for p in sp.rglob("*") if not p.is_relative_to(sp / "index"))
    code, doc = fsck(tmp_path, sp)
    assert code == 1 and doc["clean"] is False
    assert doc["summary"] == REPAIRABLE
    after = sorted(str(p.relative_to(sp)) for p in sp.rglob("*") if not p.is_relative_to(sp / "index"))
    assert after == before, "fsck without --repair changes nothing"

    code, doc = fsck(tmp_path, sp, "--repair")
    assert code == 0, [p for p in doc["problems"] if not p["repaired"]]
    assert all(p["repaired"] and p["action"] for p in doc["problems"])

    corrupt = set(os.listdir(sp / "events" / "corrupt"))
    assert f"{ctx['bad_sum']}.json" in corrupt and f"{ctx['bad_sum']}.json.reason" in corrupt
    assert "0194f0c2-0000-7000-8000-0000000000bb.json" in corrupt and os.path.islink(
        sp / "events" / "corrupt" / "0194f0c2-0000-7000-8000-0000000000bb.json"
    )
    assert ctx["outside"].read_text() == "keep", "a quarantined link's target is untouched"
    assert ctx["stale"] in ids_in(sp, "pending") and inflight_ids(sp) == set()
    assert read_json(sp / "events" / "records" / f"{ctx['stale']}.json")["done"] == ["effects"]
    assert not (events_dir(sp, "inflight") / dead_owner()).exists()
    assert os.listdir(sp / "run" / "daemons") == []
    assert os.listdir(sp / "events" / "tmp") == []
    assert (events_dir(sp, "dead") / f"{ctx['no_error']}.error").exists()
    assert not (events_dir(sp, "dead") / "0194f0c2-0000-7000-8000-0000000000cc.error").exists()
    rows = index_rows(sp)
    assert rows[ctx["missing_row"]] == "processed" and rows[ctx["wrong_state"]] == "processed"
    assert "0194f0c2-0000-7000-8000-0000000000ee" not in rows and ctx["bad_sum"] not in rows

    code, doc = fsck(tmp_path, sp)
    assert code == 0 and doc["problems"] == [], doc["problems"]


def test_repaired_stale_inflight_is_handled_with_its_journal_respected(tmp_path: Path, sp: Path) -> None:
    """A requeued stale in-flight event is processed by the next daemon, skipping the handler its journal finished."""
    eid = put_event(sp, "pending")
    owner = events_dir(sp, "inflight") / dead_owner()
    owner.mkdir()
    os.rename(events_dir(sp, "pending") / f"{eid}.json", owner / f"{eid}.json")
    (owner / "_journal").write_text("D\t" + json.dumps([eid, "effects"]) + "\n")
    code, doc = fsck(tmp_path, sp, "--repair")
    assert code == 0 and [p["kind"] for p in doc["problems"]] == ["stale_inflight"]
    effects = tmp_path / "effects.txt"
    r = run_once(tmp_path, sp, write_config(tmp_path), env={"EFFECTS_FILE": str(effects)})
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == {eid} and ok_counts(effects)[eid] == 0


def test_filed_inflight_copy_of_a_dead_owner_is_dropped_not_requeued(tmp_path: Path, sp: Path) -> None:
    """A dead daemon's mover linked an event into processed/ and died before unlinking it: keep processed/ only."""
    eid = put_event(sp, "processed")
    owner = events_dir(sp, "inflight") / dead_owner()
    owner.mkdir()
    os.link(events_dir(sp, "processed") / f"{eid}.json", owner / f"{eid}.json")
    code, doc = fsck(tmp_path, sp)
    assert code == 1 and [p["kind"] for p in doc["problems"]] == ["filed_inflight"]
    code, doc = fsck(tmp_path, sp, "--repair")
    assert code == 0 and [p["kind"] for p in doc["problems"]] == ["filed_inflight"]
    assert ids_in(sp, "processed") == {eid} and ids_in(sp, "pending") == set()
    assert not owner.exists()
    code, doc = fsck(tmp_path, sp)
    assert code == 0 and doc["problems"] == []


def test_duplicates_are_reported_not_repaired(tmp_path: Path, sp: Path) -> None:
    """One id in processed and dead is a duplicate: reported, left for an operator, exit 1 even with --repair."""
    eid = put_event(sp, "processed")
    (events_dir(sp, "dead") / f"{eid}.json").write_bytes((events_dir(sp, "processed") / f"{eid}.json").read_bytes())
    (events_dir(sp, "dead") / f"{eid}.error").write_text("{}")
    code, doc = fsck(tmp_path, sp, "--repair")
    assert code == 1
    kinds = {p["kind"]: p for p in doc["problems"]}
    assert "duplicate" in kinds and not kinds["duplicate"]["repaired"]
    assert "processed and dead" in kinds["duplicate"]["detail"]


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_index_missing_or_unreadable_is_rebuilt_from_files(tmp_path: Path, sp: Path, damage: str) -> None:
    """No index (or a garbled one) with handled events: --repair builds it from the files."""
    ids = {put_event(sp, "processed"), put_event(sp, "processed")}
    dead_id = put_event(sp, "dead")
    path = sp / "index" / "events.sqlite"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.unlink(f"{path}{suffix}")
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    code, doc = fsck(tmp_path, sp)
    assert code == 1 and set(doc["summary"]) == {f"index_{'missing' if damage == 'missing' else 'unreadable'}"}
    code, doc = fsck(tmp_path, sp, "--repair")
    assert code == 0, doc
    assert index_rows(sp) == {**{i: "processed" for i in ids}, dead_id: "dead"}
    if damage == "garbage":
        assert any(n.startswith("events.sqlite.broken-") for n in os.listdir(sp / "index"))


def test_fsck_while_daemon_runs_reports_no_false_problems(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """fsck during a daemon's work neither reports nor repairs anything on a healthy spool."""
    d = daemons.start(
        sp, write_config(tmp_path), env={"EFFECTS_FILE": str(tmp_path / "effects.txt"), "SLEEP_S": "0.002"}
    )
    wait_for(lambda: heartbeat_of(sp, d.pid), "the daemon to start", procs=[d])
    ids = emit_metrics(sp, 600)  # one key, 2 ms each: >= 1.2 s of work for fsck to overlap, on any machine
    code, doc = fsck(tmp_path, sp, "--repair")
    assert code == 0 and doc["problems"] == [], doc["problems"]
    wait_for(lambda: ids_in(sp, "processed") == set(ids), "all events processed", procs=[d])
    assert d.stop() == 0, d.stderr()
    code, doc = fsck(tmp_path, sp)
    assert code == 0 and doc["problems"] == [], doc["problems"]


def test_fsck_table_report_and_missing_spool(tmp_path: Path, sp: Path) -> None:
    """In a pipe without -o, fsck prints problems as JSON lines and the summary on stderr; no spool is 66."""
    (events_dir(sp, "processed") / "notes.txt").write_text("x")
    r = run_cli(tmp_path, "fsck", "--spool", sp)
    assert r.returncode == 1
    assert json.loads(r.stdout.splitlines()[0])["kind"] == "stray_file"
    assert "1 problem(s), 0 repaired, 1 left (run with --repair to fix)" in r.stderr
    r = run_cli(tmp_path, "fsck", "--spool", tmp_path / "nope")
    assert r.returncode == 66
    assert socket.gethostname()  # the owner ids above are this host's
