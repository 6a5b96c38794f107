"""poetctl status on real spools and a real daemon: counts (index or listing), lag, heartbeats,
throughput, and the Nagios-style --check with its thresholds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon_helpers.harness import (
    Daemons,
    emit_metrics,
    events_dir,
    heartbeat_of,
    ids_in,
    run_cli,
    wait_for,
    write_config,
)
from daemon_helpers.spool import put_event

from poetctl.backends.fs.owner import HOST


def status(tmp_path: Path, sp: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = run_cli(tmp_path, "status", "--spool", sp, "-o", "json", *args)
    assert r.returncode in (0, 1, 2), r.stderr
    return r.returncode, json.loads(r.stdout)


def check(tmp_path: Path, sp: Path, *args: str):  # type: ignore[no-untyped-def]
    return run_cli(tmp_path, "status", "--spool", sp, "--check", *args)


def populate(sp: Path) -> dict[str, Any]:
    """2 processed, 1 dead, 2 pending (one a minute old by its id), 1 in flight, 1 corrupt."""
    now = time.time()
    out = {
        # 5 s and 600 s old: 55 s and 300 s from the edges of the 1m and 15m windows status counts in.
        "processed": [put_event(sp, "processed", now - 5), put_event(sp, "processed", now - 600)],
        "dead": put_event(sp, "dead"),
        "pending": [put_event(sp, "pending", now - 100), put_event(sp, "pending")],
    }
    owner = events_dir(sp, "inflight") / f"{HOST}.{os.getpid()}.1"
    owner.mkdir()
    infl = put_event(sp, "pending")
    os.rename(events_dir(sp, "pending") / f"{infl}.json", owner / f"{infl}.json")
    (sp / "events" / "corrupt" / "x.json").write_text("x")
    (sp / "events" / "corrupt" / "x.json.reason").write_text("{}")
    return out


def test_status_counts_every_state_lag_and_recent_throughput(tmp_path: Path, sp: Path) -> None:
    """status -o json counts each state, gives the oldest pending age as lag and recent processed counts."""
    populate(sp)
    code, doc = status(tmp_path, sp)
    assert code == 0
    assert doc["counts"] == {"pending": 2, "inflight": 1, "processed": 2, "dead": 1, "corrupt": 1}
    assert doc["counts_source"] == {"processed": "index"}
    assert 95 <= doc["lag_seconds"] <= 200 and doc["oldest_pending_age_seconds"] == doc["lag_seconds"]
    assert doc["throughput"]["processed_recent"] == {"1m": 1, "5m": 1, "15m": 2}
    assert doc["daemons"] == [] and doc["daemons_alive"] == 0


def test_status_without_index_lists_processed(tmp_path: Path, sp: Path) -> None:
    """With no index, processed is counted by listing and throughput says it has no source."""
    populate(sp)
    shutil.rmtree(sp / "index")
    _, doc = status(tmp_path, sp)
    assert doc["counts"]["processed"] == 2 and doc["counts_source"] == {"processed": "listing"}
    assert doc["throughput"]["processed_recent"] is None
    assert not (sp / "index").exists(), "status never creates the index"


def test_status_check_ok_warning_critical(tmp_path: Path, sp: Path) -> None:
    """--check: 0 OK on a healthy spool, 1 WARNING for dead letters, 2 CRITICAL for lag, with a Nagios line."""
    r = check(tmp_path, sp)
    assert r.returncode == 0 and r.stdout.startswith("POET OK - ") and "| lag=" in r.stdout
    put_event(sp, "dead")
    r = check(tmp_path, sp)
    assert r.returncode == 1 and r.stdout.startswith("POET WARNING - 1 dead letter(s) > 0")
    assert check(tmp_path, sp, "--max-dead", "5").returncode == 0
    put_event(sp, "pending", time.time() - 600)
    r = check(tmp_path, sp, "--max-dead", "5")
    assert r.returncode == 2 and "lag 6" in r.stdout and "> 300s" in r.stdout
    r = check(tmp_path, sp, "--max-dead", "5", "--warn-lag", "5m", "--max-lag", "1h")
    assert r.returncode == 1 and "> 300s" in r.stdout
    code, doc = status(tmp_path, sp, "--check", "--max-lag", "1d", "--warn-lag", "1d")
    assert code == 1 and doc["check"]["status"] == "WARNING" and doc["check"]["reasons"] == ["1 dead letter(s) > 0"]


def test_status_check_stale_daemon_and_min_daemons(tmp_path: Path, sp: Path) -> None:
    """A heartbeat of a gone daemon is stale (WARNING); --min-daemons 1 with none alive is CRITICAL."""
    hb = sp / "run" / "daemons"
    hb.mkdir(exist_ok=True)
    (hb / f"{HOST}.{2**22 + 5}.1.json").write_text(
        json.dumps(
            {
                "owner": f"{HOST}.{2**22 + 5}.1",
                "pid": 2**22 + 5,
                "last_beat": time.time(),
                "started_at": 1.0,
                "counts": {"processed": 10},
                "inflight": 0,
            }
        )
    )
    (hb / "garbage.json").write_text("{{{")
    code, doc = status(tmp_path, sp)
    assert code == 0 and [d["alive"] for d in doc["daemons"]] == [False] and doc["daemons_stale"] == 1
    r = check(tmp_path, sp)
    assert r.returncode == 1 and "1 stale daemon(s) > 0" in r.stdout
    assert check(tmp_path, sp, "--max-stale", "1").returncode == 0
    r = check(tmp_path, sp, "--max-stale", "1", "--min-daemons", "1")
    assert r.returncode == 2 and "0 daemon(s) alive < 1" in r.stdout


def test_status_with_running_daemon_shows_it_alive_with_rate(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """A running daemon is listed alive with its counters; --check --min-daemons 1 is then OK."""
    d = daemons.start(
        sp, write_config(tmp_path, heartbeat_interval=0.1), env={"EFFECTS_FILE": str(tmp_path / "effects.txt")}
    )
    ids = emit_metrics(sp, 50)
    wait_for(lambda: ids_in(sp, "processed") == set(ids) and heartbeat_of(sp, d.pid), "processing", procs=[d])

    def counted() -> dict[str, Any] | None:
        doc = status(tmp_path, sp)[1]
        live = [x for x in doc["daemons"] if x["pid"] == d.pid and x["counts"]["processed"] == len(ids)]
        return doc if live and doc["counts"]["processed"] == len(ids) else None

    doc = wait_for(counted, "status to count the daemon's work", procs=[d])
    e = doc["daemons"][0]
    assert e["alive"] is True and e["stale"] is False and e["rate_per_second"] > 0
    assert doc["throughput"]["processed_recent"]["1m"] == len(ids)
    assert check(tmp_path, sp, "--min-daemons", "1").returncode == 0
    assert d.stop() == 0, d.stderr()


def test_status_table_bad_options_and_missing_spool(tmp_path: Path, sp: Path) -> None:
    """-o table renders; a bad duration is 2; a missing spool is 66."""
    populate(sp)
    r = run_cli(tmp_path, "status", "--spool", sp, "-o", "table", env={"COLUMNS": "200"})
    assert r.returncode == 0 and "processed" in r.stdout and "lag (oldest pending)" in r.stdout
    r = check(tmp_path, sp, "--max-lag", "soon")
    assert r.returncode == 2 and "--max-lag 'soon'" in r.stderr
    r = run_cli(tmp_path, "status", "--spool", tmp_path / "nope")
    assert r.returncode == 66


def test_check_thresholds_come_from_poet_toml_unless_given(tmp_path: Path) -> None:
    """[status] in poet.toml sets --check thresholds; a command-line option overrides it."""
    from poetctl.backends.fs.layout import SpoolLayout

    spool = tmp_path / "sp"
    SpoolLayout(spool).init()
    (tmp_path / "poet.toml").write_text('[status]\nmin_daemons = 1\nmax_lag = "10m"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET")}
    base = [sys.executable, "-m", "poetctl", "--spool", str(spool), "status", "--check"]
    r = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CRITICAL" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([*base, "--min-daemons", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and ";600 " in r.stdout, r.stdout + r.stderr


def test_status_counts_what_corrupt_list_lists(tmp_path: Path, sp: Path) -> None:
    """status's corrupt count equals `corrupt list`: a quarantined x.reason and an orphan .reason count."""
    corrupt = sp / "events" / "corrupt"
    (corrupt / "a.json").write_text("a")
    (corrupt / "a.json.reason").write_text('{"reason": "bad_json"}')
    (corrupt / "x.reason").write_text("a quarantined file that ends in .reason")
    (corrupt / "x.reason.reason").write_text('{"reason": "bad_name"}')
    (corrupt / "gone.json.reason").write_text('{"reason": "bad_json"}')  # its file was requeued by hand
    (corrupt / ".a.json.1.tmp").write_text("a writer's tmp file")
    r = run_cli(tmp_path, "corrupt", "list", "--spool", sp, "-o", "json")
    listed = sorted(row["name"] for row in json.loads(r.stdout))
    assert listed == ["a.json", "gone.json.reason", "x.reason"], r.stdout
    assert status(tmp_path, sp)[1]["counts"]["corrupt"] == 3
    r = check(tmp_path, sp, "--max-corrupt", "2")
    assert r.returncode == 1 and "3 corrupt file(s) > 2" in r.stdout, r.stdout
