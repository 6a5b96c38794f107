"""poetctl prune on real spools: what goes (by event time), what never goes, silence for cron,
the lock, and that links and symlinked directories never lead a deletion outside the spool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    Daemons,
    argv,
    clean_env,
    count_json,
    emit_metrics,
    events_dir,
    ids_in,
    inflight_ids,
    run_cli,
    wait_for,
    write_config,
)
from daemon_helpers.spool import index_rows, put_event, uuid7_at

from poetctl import EventRouter
from poetctl.backends.fs.index import Index, row_of
from poetctl.backends.fs.writer import spool_lock
from poetctl.spool import SpoolLayout

DAY = 86400.0


def prune(tmp_path: Path, sp: Path, *args: str):  # type: ignore[no-untyped-def]
    return run_cli(tmp_path, "prune", "--spool", sp, *args)


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_prune_removes_expired_processed_and_is_silent(tmp_path: Path, sp: Path) -> None:
    """Processed events older than --days (by event time) and their index rows go; newer ones stay; no output."""
    now = time.time()
    old = [put_event(sp, "processed", now - 40 * DAY + i) for i in range(5)]
    young = [put_event(sp, "processed", now - 10 * DAY + i) for i in range(3)]
    r = prune(tmp_path, sp)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    assert ids_in(sp, "processed") == set(young)
    assert set(index_rows(sp)) == set(young)
    r = prune(tmp_path, sp, "--days", "5")
    assert r.returncode == 0 and ids_in(sp, "processed") == set()
    assert old  # (kept for the message on failure)


def test_prune_ages_unindexed_events_by_name_or_content(tmp_path: Path, sp: Path) -> None:
    """Without index rows, UUIDv7 names give the age; other ids are aged by their content."""
    now = time.time()
    by_name = put_event(sp, "processed", now - 40 * DAY, index=False)
    fresh_by_name = put_event(sp, "processed", now - DAY, index=False)
    custom_old = put_event(sp, "processed", now - 40 * DAY, event_id="custom-key-1", index=False)
    custom_new = put_event(sp, "processed", now - DAY, event_id="custom-key-2", index=False)
    # Indexed with a young event time but an old-looking name: the index has the last word.
    old_name = put_event(sp, "processed", now - DAY, event_id=uuid7_at(now - 50 * DAY))
    r = prune(tmp_path, sp, "-v")
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == {fresh_by_name, custom_new, old_name}
    assert "removed 2 processed event(s)" in r.stdout
    assert by_name and custom_old


def test_prune_feedback_by_received_at_or_mtime_and_tmp_after_a_day(tmp_path: Path, sp: Path) -> None:
    """feedback/processed goes by received_at (else mtime); events/tmp leftovers go after a day."""
    now = time.time()
    fb = sp / "feedback" / "processed"
    (fb / "old.json").write_text(json.dumps({"received_at": now - 40 * DAY}))
    (fb / "new.json").write_text(json.dumps({"received_at": now - DAY}))
    (fb / "garbled.json").write_text("not json")
    age(fb / "garbled.json", 40 * DAY)
    (fb / "garbled-new.json").write_text("not json")
    (sp / "feedback" / "pending" / "waiting.json").write_text(json.dumps({"received_at": now - 90 * DAY}))
    tmp = sp / "events" / "tmp"
    (tmp / ".stale.tmp").write_text("x")
    age(tmp / ".stale.tmp", 2 * DAY)
    (tmp / ".live.tmp").write_text("x")
    r = prune(tmp_path, sp, "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["feedback"] == 2 and doc["tmp"] == 1 and doc["processed"] == 0
    assert sorted(os.listdir(fb)) == ["garbled-new.json", "new.json"]
    assert os.listdir(tmp) == [".live.tmp"]
    assert os.listdir(sp / "feedback" / "pending") == ["waiting.json"]


def test_prune_never_touches_other_states_unless_dead_is_asked(tmp_path: Path, sp: Path) -> None:
    """Old pending, in-flight, dead and corrupt files stay; --dead prunes old dead letters and orphan .error files."""
    now = time.time()
    pend = put_event(sp, "pending", now - 90 * DAY)
    owner = events_dir(sp, "inflight") / "host.1.1"
    owner.mkdir()
    infl = put_event(sp, "pending", now - 90 * DAY)
    os.rename(events_dir(sp, "pending") / f"{infl}.json", owner / f"{infl}.json")
    old_dead = put_event(sp, "dead", now - 90 * DAY)
    new_dead = put_event(sp, "dead", now - DAY)
    orphan = events_dir(sp, "dead") / "0194f0c2-0000-7000-8000-000000000001.error"
    orphan.write_text("{}")
    age(orphan, 90 * DAY)
    (sp / "events" / "corrupt" / "junk.json").write_text("x")
    age(sp / "events" / "corrupt" / "junk.json", 90 * DAY)
    assert prune(tmp_path, sp, "--days", "1").returncode == 0
    assert ids_in(sp, "pending") == {pend} and inflight_ids(sp) == {infl}
    assert ids_in(sp, "dead") == {old_dead, new_dead} and orphan.exists()
    assert os.listdir(sp / "events" / "corrupt") == ["junk.json"]
    r = prune(tmp_path, sp, "--days", "30", "--dead", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dead"] == 1 and doc["dead_errors"] == 2
    assert sorted(os.listdir(events_dir(sp, "dead"))) == [f"{new_dead}.error", f"{new_dead}.json"]
    assert set(index_rows(sp)) == {new_dead}
    assert ids_in(sp, "pending") == {pend} and inflight_ids(sp) == {infl}


def test_prune_dry_run_counts_and_removes_nothing(tmp_path: Path, sp: Path) -> None:
    """--dry-run prints what would go (index and unindexed files alike, each once) and removes nothing."""
    now = time.time()
    ids = [put_event(sp, "processed", now - 40 * DAY) for _ in range(3)]
    ids.append(put_event(sp, "processed", now - 40 * DAY, index=False))
    r = prune(tmp_path, sp, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would remove 4 processed event(s)" in r.stdout
    assert ids_in(sp, "processed") == set(ids) and len(index_rows(sp)) == 3


def test_prune_never_follows_symlinks_or_descends_symlinked_dirs(tmp_path: Path, sp: Path) -> None:
    """Links in processed/ (to old files or directories outside) are left alone and their targets untouched."""
    now = time.time()
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.json"
    target.write_text("keep")
    age(target, 90 * DAY)
    victim_id = put_event(sp, "processed", now - 90 * DAY, index=False)
    os.rename(events_dir(sp, "processed") / f"{victim_id}.json", outside / f"{victim_id}.json")
    os.symlink(outside / f"{victim_id}.json", events_dir(sp, "processed") / f"{victim_id}.json")
    os.symlink(outside, events_dir(sp, "processed") / "subdir")
    (outside / "inner.json").write_text("keep too")
    link_fb = sp / "feedback" / "processed" / "x.json"
    os.symlink(target, link_fb)
    expired = put_event(sp, "processed", now - 90 * DAY)
    r = prune(tmp_path, sp, "-v")
    assert r.returncode == 0, r.stderr
    assert "not a regular file" in r.stderr
    assert expired not in ids_in(sp, "processed")
    assert target.read_text() == "keep" and (outside / "inner.json").read_text() == "keep too"
    assert (outside / f"{victim_id}.json").exists()
    assert os.path.islink(events_dir(sp, "processed") / f"{victim_id}.json") and os.path.islink(link_fb)


def test_prune_leaves_indexed_names_that_are_links_or_directories(tmp_path: Path, sp: Path) -> None:
    """An indexed expired event whose file became a link or a directory is left alone; the others go."""
    now = time.time()
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.json"
    target.write_text("keep")
    linked = put_event(sp, "processed", now - 90 * DAY)
    made_dir = put_event(sp, "processed", now - 90 * DAY)
    expired = [put_event(sp, "processed", now - 90 * DAY) for _ in range(3)]
    processed = events_dir(sp, "processed")
    os.unlink(processed / f"{linked}.json")
    os.symlink(target, processed / f"{linked}.json")
    os.unlink(processed / f"{made_dir}.json")
    (processed / f"{made_dir}.json").mkdir()
    (processed / f"{made_dir}.json" / "inner.json").write_text("keep too")
    r = prune(tmp_path, sp, "-v")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("not a regular file") == 2, r.stderr
    assert ids_in(sp, "processed").isdisjoint(expired)
    assert os.path.islink(processed / f"{linked}.json") and target.read_text() == "keep"
    assert (processed / f"{made_dir}.json" / "inner.json").read_text() == "keep too"


def test_prune_leaves_a_directory_that_appears_after_its_listing(tmp_path: Path, sp: Path) -> None:
    """A name that was not listed as odd but is a directory at unlink time is reported and left alone."""
    from poetctl.backends.fs.index import Index
    from poetctl.backends.fs.prune import Pruner

    now = time.time()
    late = put_event(sp, "processed", now - 90 * DAY)
    expired = [put_event(sp, "processed", now - 90 * DAY) for _ in range(3)]
    layout = SpoolLayout(sp)
    index = Index(layout, create=False)
    pruner = Pruner(layout, 30, index=index)
    listed = pruner._not_regular

    def listing_then_mkdir(d):  # type: ignore[no-untyped-def]
        odd = listed(d)
        path = events_dir(sp, "processed") / f"{late}.json"
        os.unlink(path)
        path.mkdir()
        return odd

    pruner._not_regular = listing_then_mkdir  # type: ignore[method-assign]
    try:
        report = pruner.run()
    finally:
        index.close()
    assert report.processed == 3 and report.skipped == 1, report
    assert (events_dir(sp, "processed") / f"{late}.json").is_dir()
    assert ids_in(sp, "processed").isdisjoint(expired)
    assert late in index_rows(sp)


def test_prune_refuses_a_symlinked_state_directory(tmp_path: Path, sp: Path) -> None:
    """If events/processed itself is a link to elsewhere, prune does not work through it (74) and deletes nothing."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / f"{put_event(sp, 'processed', time.time() - 90 * DAY, index=False)}.json"
    os.rename(next(events_dir(sp, "processed").iterdir()), victim)
    os.rmdir(events_dir(sp, "processed"))
    os.symlink(elsewhere, events_dir(sp, "processed"))
    r = prune(tmp_path, sp)
    assert r.returncode == 74 and "symlink" in r.stderr
    assert victim.exists()


def test_concurrent_prune_exits_75(tmp_path: Path, sp: Path) -> None:
    """While another prune holds the lock, prune exits 75 (try again) without touching anything."""
    old = put_event(sp, "processed", time.time() - 40 * DAY)
    with spool_lock(SpoolLayout(sp), "prune", blocking=False):
        r = prune(tmp_path, sp)
    assert r.returncode == 75 and "try again" in r.stderr
    assert ids_in(sp, "processed") == {old}
    assert prune(tmp_path, sp).returncode == 0 and ids_in(sp, "processed") == set()


@pytest.mark.parametrize("args, code", [(["--days", "-1"], 2), (["--days", "x"], 2)])
def test_prune_bad_options_exit_2(tmp_path: Path, sp: Path, args: list[str], code: int) -> None:
    """A negative or non-numeric --days is a usage error."""
    assert prune(tmp_path, sp, *args).returncode == code


def test_prune_missing_spool_exits_66(tmp_path: Path) -> None:
    """prune on a spool that does not exist exits 66 and creates nothing."""
    r = prune(tmp_path, tmp_path / "nope")
    assert r.returncode == 66 and not (tmp_path / "nope").exists()


def test_prune_while_daemon_runs_loses_no_live_event(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """Pruning old events while a daemon handles new ones removes only the old ones."""
    now = time.time()
    old = [put_event(sp, "processed", now - 40 * DAY + i) for i in range(200)]
    d = daemons.start(sp, write_config(tmp_path), env={"EFFECTS_FILE": str(tmp_path / "effects.txt")})
    live = emit_metrics(sp, 300)
    r = prune(tmp_path, sp)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: ids_in(sp, "processed") == set(live), "the live events to be processed", procs=[d])
    assert d.stop() == 0, d.stderr()
    assert not set(old) & set(index_rows(sp))


def put_many(sp: Path, stamps: list[float]) -> list[str]:
    """Handled events written as the daemon leaves them (files, then index rows in one transaction)."""
    router = EventRouter(spool=sp)
    rows = []
    for ts in stamps:
        ev, _ = router.build("system.metrics", {"service": "t", "metrics": {"n": 1}})
        ev.id = uuid7_at(ts)
        ev.timestamp = round(ts, 6)
        ev.seal()
        (events_dir(sp, "processed") / f"{ev.id}.json").write_bytes(ev.to_json() + b"\n")
        rows.append(row_of(ev, "processed"))
    idx = Index(SpoolLayout(sp))
    idx.put(rows)
    idx.close()
    return [r[0] for r in rows]


def test_prune_killed_midway_leaves_a_spool_fsck_accepts_and_a_rerun_finishes(tmp_path: Path, sp: Path) -> None:
    """SIGKILL mid-prune: only index rows of removed files remain (fsck names them); a rerun finishes the job."""
    now = time.time()
    expired = put_many(sp, [now - 40 * DAY + i * 0.001 for i in range(6000)])
    young = put_many(sp, [now - DAY + i for i in range(20)])
    processed = events_dir(sp, "processed")
    total = count_json(processed)
    p = subprocess.Popen(
        argv("prune", "--spool", sp),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: count_json(processed) < total or p.poll() is not None, "prune to remove a file")
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    left = ids_in(sp, "processed")
    if p.returncode != -signal.SIGKILL or not left & set(expired):
        pytest.skip("prune finished before the kill landed (machine too fast for 6,000 events)")
    assert set(young) <= left
    r = run_cli(tmp_path, "fsck", "--spool", sp, "-o", "json")
    kinds = {q["kind"] for q in json.loads(r.stdout)["problems"]}
    assert kinds <= {"index_orphan_row"}, r.stdout
    r = prune(tmp_path, sp, "-o", "json")
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == set(young) and set(index_rows(sp)) == set(young)
    r = run_cli(tmp_path, "fsck", "--spool", sp, "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["problems"] == [], r.stdout


def test_index_delete_batch_removes_exactly_the_given_ids(sp: Path) -> None:
    """Prune's one-statement row deletion removes the listed ids, odd characters included, and no others."""
    idx = Index(SpoolLayout(sp))
    try:
        ids = ['q"uote', "back\\slash", "ünï-cødé", "a,b", "plain", "kept-1", "kept-2"]
        idx.put([(i, 1.0, "system.metrics", "t", "s", None, None, "processed") for i in ids])
        idx.delete_batch([*ids[:5], "absent"])
        assert sorted(r[0] for r in idx.db.execute("SELECT id FROM events")) == ["kept-1", "kept-2"]
    finally:
        idx.close()
