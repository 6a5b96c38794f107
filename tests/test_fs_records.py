"""One way to hand a dead owner's verdicts back with its events (daemon recovery and fsck --repair
merge completion records alike) and one writer of dead letters' ``.error`` files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
from daemon_helpers.harness import emit_metrics, events_dir, read_json, run_cli

from poetctl.backends.fs.journal import dead_letter
from poetctl.backends.fs.layout import SpoolLayout
from poetctl.backends.fs.owner import HOST
from poetctl.daemon.core import Daemon, DaemonOptions
from poetctl.router import EventRouter
from poetctl.transport import Record, dead_letter_info

DEAD_OWNER = f"{HOST}.{2**22 + 12345}.1"  # a pid that cannot be a live process on this host
SEEN = {"handler": "effects", "attempt": 1, "at": 1000.0, "error": "RuntimeError: boom", "traceback": ""}
NEW = {"handler": "effects", "attempt": 2, "at": 2000.0, "error": "RuntimeError: again", "traceback": ""}


def _dead_owner_with_a_record_already_saved(sp: Path) -> str:
    """A dead owner holds an event; its journal repeats an attempt its saved record already has.

    That is what a recovery that died after writing ``events/records/<id>.json``
    (and before moving the event) leaves for the next recovery.
    """
    (eid,) = emit_metrics(sp, 1)
    owner = events_dir(sp, "inflight") / DEAD_OWNER
    owner.mkdir()
    os.rename(events_dir(sp, "pending") / f"{eid}.json", owner / f"{eid}.json")
    lines = [
        "D\t" + json.dumps([eid, "first"]),
        "F\t" + json.dumps([eid, SEEN, 1500.0]),
        "F\t" + json.dumps([eid, NEW, 2500.0]),
    ]
    (owner / "_journal").write_text("\n".join(lines) + "\n")
    saved = {"done": ["second"], "failures": [SEEN], "not_before": 9000.0}
    (sp / "events" / "records" / f"{eid}.json").write_bytes(orjson.dumps(saved))
    return eid


def _expect_merged(record: dict[str, Any]) -> None:
    assert record["failures"] == [SEEN, NEW], "each attempt once, in time order"
    assert sorted(record["done"]) == ["first", "second"]
    assert record["not_before"] == 9000.0, "the later not-before (the saved record's backoff) wins"


def test_fsck_requeue_merges_with_a_saved_record_without_counting_an_attempt_twice(tmp_path: Path, sp: Path) -> None:
    """fsck --repair's requeue merges the journal into an existing record as recovery does: no attempt twice."""
    eid = _dead_owner_with_a_record_already_saved(sp)
    r = run_cli(tmp_path, "fsck", "--spool", sp, "--repair", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [p["kind"] for p in json.loads(r.stdout)["problems"]] == ["stale_inflight"]
    assert (events_dir(sp, "pending") / f"{eid}.json").exists()
    _expect_merged(read_json(sp / "events" / "records" / f"{eid}.json"))


def test_daemon_recovery_and_fsck_requeue_leave_the_same_record(tmp_path: Path, sp: Path) -> None:
    """Daemon recovery of the same dead owner writes exactly the record fsck --repair writes."""
    other = tmp_path / "other"
    other.mkdir()
    sp2 = other / "spool"
    SpoolLayout(sp2).init()
    eid = _dead_owner_with_a_record_already_saved(sp)
    eid2 = _dead_owner_with_a_record_already_saved(sp2)
    assert run_cli(tmp_path, "fsck", "--spool", sp, "--repair").returncode == 0
    daemon = Daemon(EventRouter(spool=sp2), DaemonOptions(once=True, watch=False))
    assert daemon.consumer.recovery.run(all_dead=True) == 1
    assert (events_dir(sp2, "pending") / f"{eid2}.json").exists()
    by_fsck = read_json(sp / "events" / "records" / f"{eid}.json")
    by_daemon = read_json(sp2 / "events" / "records" / f"{eid2}.json")
    _expect_merged(by_daemon)
    assert by_fsck == by_daemon


def test_fsck_recreates_an_error_record_in_the_daemons_shape(tmp_path: Path, sp: Path) -> None:
    """A .error recreated by fsck --repair has every field of one the daemon writes (the same writer and builder)."""
    written, missing = emit_metrics(sp, 2)
    layout = SpoolLayout(sp)
    for eid in (written, missing):
        info = dead_letter_info(eid, "attempts_exhausted", Record(), time.time())
        dead_letter(layout, layout.pending / f"{eid}.json", eid, info)
    os.unlink(layout.dead / f"{missing}.error")
    r = run_cli(tmp_path, "fsck", "--spool", sp, "--repair", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dead_without_error" in [p["kind"] for p in json.loads(r.stdout)["problems"]]
    daemon_made = read_json(layout.dead / f"{written}.error")
    fsck_made = read_json(layout.dead / f"{missing}.error")
    assert set(daemon_made) <= set(fsck_made), set(daemon_made) - set(fsck_made)
    assert fsck_made["id"] == missing and fsck_made["reason"] == "unknown" and fsck_made["attempts"] == 0
    assert "recreated by poetctl fsck" in fsck_made["note"]
