"""poetctl replay on real spools and real daemons: selection, the replay mark, index and record
upkeep, crash safety, and the documented exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    Daemons,
    clean_env,
    emit_executions,
    emit_metrics,
    events_dir,
    execution_payload,
    ids_in,
    inflight_ids,
    ok_counts,
    read_json,
    run_cli,
    run_once,
    wait_for,
    write_config,
)
from daemon_helpers.spool import index_rows, lines, put_event

from poetctl import EventRouter
from poetctl.event import compute_checksum

DAY = 86400.0


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """poet.toml with fast backoff, max_attempts 3 and short rescans."""
    return write_config(tmp_path)


def effects_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"EFFECTS_FILE": str(tmp_path / "effects.txt"), **extra}


def seeded(sp: Path) -> tuple[list[str], list[str]]:
    """4 processed metrics and 3 processed executions (correlation corr-x), written directly and indexed."""
    now = time.time()
    metrics = [
        put_event(sp, "processed", now - 100 + i, payload={"service": "t", "metrics": {"n": i}}) for i in range(4)
    ]
    execs = [
        put_event(
            sp,
            "processed",
            now - 50 + i,
            event_type="function.execution",
            payload=execution_payload("fa", i),
            correlation_id="corr-x",
        )
        for i in range(3)
    ]
    return metrics, execs


def handled(tmp_path: Path, sp: Path, cfg: Path) -> tuple[list[str], list[str]]:
    """Emit 4 metrics and 3 executions (correlation corr-x) and process them with the effects handler."""
    router = EventRouter(spool=sp)
    metrics = [router.emit("system.metrics", {"service": "t", "metrics": {"n": i}}) for i in range(4)]
    execs = [router.emit("function.execution", execution_payload("fa", i), correlation_id="corr-x") for i in range(3)]
    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == set(metrics + execs)
    return metrics, execs


def replay(tmp_path: Path, sp: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "poetctl", "replay", "--spool", str(sp), *args]
    return subprocess.run(
        argv,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


# -- tests --------------------------------------------------------------------------------------
def test_replay_moves_matches_to_pending_with_mark_new_checksum_and_no_index_row(
    tmp_path: Path, sp: Path, cfg: Path
) -> None:
    """replay --type moves exactly the matching processed events to pending, marked, resealed, unindexed."""
    metrics, execs = seeded(sp)
    before = time.time()
    r = replay(tmp_path, sp, "--type", "system.*")
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout) == sorted(metrics), "ids are printed one per line, oldest first"
    assert ids_in(sp, "pending") == set(metrics)
    assert ids_in(sp, "processed") == set(execs)
    assert inflight_ids(sp) == set() and os.listdir(events_dir(sp, "inflight")) == []
    for eid in metrics:
        ev = read_json(events_dir(sp, "pending") / f"{eid}.json")
        assert ev["id"] == eid
        mark = ev["metadata"]["replayed"]
        assert mark["count"] == 1 and mark["from"] == "processed" and mark["at"] >= before - 1
        assert ev["checksum"] == compute_checksum(ev)
    rows = index_rows(sp)
    assert not set(metrics) & set(rows), "replayed events must leave the index (pending is not indexed)"
    assert all(rows[e] == "processed" for e in execs)


def test_replay_dry_run_lists_and_moves_nothing(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """--dry-run prints what would be replayed and leaves files and index untouched."""
    metrics, execs = seeded(sp)
    r = replay(tmp_path, sp, "--all", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert set(lines(r.stdout)) == set(metrics + execs)
    assert ids_in(sp, "pending") == set()
    assert ids_in(sp, "processed") == set(metrics + execs)
    assert len(index_rows(sp)) == len(metrics + execs)


@pytest.mark.parametrize(
    "args, pick",
    [
        (["--topic", "poet/functions/*"], "execs"),
        (["--correlation-id", "corr-x"], "execs"),
        (["--type", "system.metrics", "--topic", "poet/functions/*"], "none"),
        (["--since", "1h", "--type", "function.*"], "execs"),
        (["--until", "1h"], "none"),
    ],
)
def test_replay_selectors_combine_with_and(tmp_path: Path, sp: Path, cfg: Path, args: list[str], pick: str) -> None:
    """--topic, --correlation-id, --since/--until and --type select by AND; no match exits 1."""
    _, execs = seeded(sp)
    r = replay(tmp_path, sp, *args, "--dry-run")
    expected = {"execs": set(execs), "none": set()}[pick]
    assert set(lines(r.stdout)) == expected
    assert r.returncode == (0 if expected else 1), r.stderr
    if not expected:
        assert "nothing would be replayed" in r.stderr


def test_replay_ids_from_options_and_stdin_plain_or_json_lines(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """--id is repeatable; --id - reads ids or JSON lines with an id from stdin; unknown ids are named."""
    metrics, execs = seeded(sp)
    r = replay(tmp_path, sp, "--id", metrics[0], "--id", metrics[1], "--dry-run")
    assert lines(r.stdout) == metrics[:2] and r.returncode == 0
    stdin = f"{metrics[2]}\n" + json.dumps({"id": execs[0], "type": "x"}) + "\n\n"
    r = replay(tmp_path, sp, "--id", "-", stdin=stdin)
    assert r.returncode == 0, r.stderr
    assert set(lines(r.stdout)) == {metrics[2], execs[0]}
    assert ids_in(sp, "pending") == {metrics[2], execs[0]}
    r = replay(tmp_path, sp, "--id", metrics[2], "--id", "no-such-id", "--id", metrics[3])
    assert r.returncode == 0 and lines(r.stdout) == [metrics[3]]
    assert f"{metrics[2]}: it is in events/pending/" in r.stderr
    assert "no-such-id: no such event in the spool" in r.stderr


@pytest.mark.parametrize(
    "args, code, needle",
    [
        ([], 2, "needs a selector"),
        (["--all", "--type", "x.y"], 2, "either --all or selectors"),
        (["--since", "yesterday"], 2, "--since 'yesterday'"),
        (["--topic", "poet//bad segment"], 2, "bad topic pattern"),
        (["--id", "../etc/passwd"], 2, "not an event id"),
        (["--from", "pending", "--all"], 2, "--from 'pending'"),
        (["--id", "0194f0c2-0000-7000-8000-000000000000"], 1, "no such event"),
        (["--all"], 1, "nothing was replayed"),
    ],
)
def test_replay_bad_input_and_empty_spool_exit_codes(
    tmp_path: Path, sp: Path, args: list[str], code: int, needle: str
) -> None:
    """Usage errors exit 2, an empty spool or unknown id exits 1, each with a one-line message."""
    r = replay(tmp_path, sp, *args)
    assert r.returncode == code, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_replay_missing_spool_exits_66(tmp_path: Path) -> None:
    """A spool that does not exist is 66 with a hint, and nothing is created."""
    r = replay(tmp_path, tmp_path / "nope", "--all")
    assert r.returncode == 66 and "no spool" in r.stderr
    assert not (tmp_path / "nope").exists()


def test_replay_skips_and_reports_damaged_file(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """A damaged processed file is reported on stderr and skipped; the others are replayed."""
    metrics, _ = seeded(sp)
    bad = events_dir(sp, "processed") / f"{metrics[0]}.json"
    bad.write_bytes(bad.read_bytes().replace(b'"n":0', b'"n":7'))
    r = replay(tmp_path, sp, "--type", "system.metrics")
    assert r.returncode == 0, r.stderr
    assert set(lines(r.stdout)) == set(metrics[1:])
    assert "bad_checksum" in r.stderr and metrics[0] in r.stderr
    assert bad.exists(), "a damaged file is never moved by replay"


def test_replay_without_index_lists_directory(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """With no index, replay selects from the processed/ listing and does not create an index."""
    _, execs = seeded(sp)
    shutil.rmtree(sp / "index")
    r = replay(tmp_path, sp, "--type", "function.execution")
    assert r.returncode == 0, r.stderr
    assert set(lines(r.stdout)) == set(execs)
    assert not (sp / "index").exists()


def test_replay_resets_completion_records_and_counts_replays(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """Leftover completion records are dropped (every handler runs again) and the count grows per replay."""
    metrics, _ = handled(tmp_path, sp, cfg)
    eid = metrics[0]
    (sp / "events" / "records" / f"{eid}.json").write_text(json.dumps({"done": ["effects"], "failures": []}))
    assert replay(tmp_path, sp, "--id", eid).returncode == 0
    assert not (sp / "events" / "records" / f"{eid}.json").exists()
    assert run_once(tmp_path, sp, cfg, env=effects_env(tmp_path)).returncode == 0
    assert ok_counts(tmp_path / "effects.txt")[eid] == 2, "the handler must run again despite the old record"
    assert replay(tmp_path, sp, "--id", eid).returncode == 0
    ev = read_json(events_dir(sp, "pending") / f"{eid}.json")
    assert ev["metadata"]["replayed"]["count"] == 2


def test_replay_refuses_when_id_already_pending_and_keeps_processed_copy(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """If pending/<id>.json exists, replay never replaces it; the processed copy stays, exit 1."""
    metrics, _ = seeded(sp)
    eid = metrics[0]
    shutil.copy(events_dir(sp, "processed") / f"{eid}.json", events_dir(sp, "pending") / f"{eid}.json")
    original = (events_dir(sp, "pending") / f"{eid}.json").read_bytes()
    r = replay(tmp_path, sp, "--id", eid)
    assert r.returncode == 1 and "already pending" in r.stderr
    assert (events_dir(sp, "pending") / f"{eid}.json").read_bytes() == original
    assert eid in ids_in(sp, "processed") and inflight_ids(sp) == set()
    assert index_rows(sp).get(eid) == "processed"


def test_replay_while_daemon_runs_reruns_each_handler_exactly_once(
    tmp_path: Path, sp: Path, cfg: Path, daemons: Daemons
) -> None:
    """With a daemon running, every replayed event is handled exactly once more and ends in processed."""
    env = effects_env(tmp_path)
    d = daemons.start(sp, cfg, env=env)
    ids = emit_executions(sp, ["fa", "fb", "fc"], 40) + emit_metrics(sp, 80)
    wait_for(lambda: ids_in(sp, "processed") == set(ids), "first pass", procs=[d])
    r = replay(tmp_path, sp, "--all")
    assert r.returncode == 0, r.stderr
    assert set(lines(r.stdout)) == set(ids)
    effects = tmp_path / "effects.txt"
    wait_for(
        lambda: (
            sum(ok_counts(effects).values()) >= 2 * len(ids)
            and ids_in(sp, "processed") == set(ids)
            and not ids_in(sp, "pending")
            and not inflight_ids(sp)
        ),
        "the replay to be handled",
        procs=[d],
    )
    assert d.stop() == 0, d.stderr()
    counts = ok_counts(effects)
    assert set(counts) == set(ids) and set(counts.values()) == {2}, Counter(counts.values())
    rows = index_rows(sp)
    assert all(rows.get(i) == "processed" for i in ids), "the daemon re-indexes replayed events"
    for i in ids[:5]:
        assert read_json(events_dir(sp, "processed") / f"{i}.json")["metadata"]["replayed"]["count"] == 1


def test_replay_killed_midway_loses_nothing_and_daemon_recovers(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """A replay process that dies between taking and queueing leaves the events recoverable, not lost."""
    metrics, execs = handled(tmp_path, sp, cfg)
    script = (
        "import os, sys\n"
        "import poetctl.backends.fs.replay as r\n"
        "def die(*args): os._exit(9)\n"
        "r.rename_noreplace_at = die\n"
        "from poetctl.cli import main\n"
        "sys.argv = ['poetctl', 'replay', '--spool', sys.argv[1], '--all']\n"
        "main()\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script, str(sp)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert p.returncode == 9, p.stderr
    every = set(metrics + execs)
    assert inflight_ids(sp) == every, "the killed replay holds them in its own in-flight directory"
    assert ids_in(sp, "processed") == set() and ids_in(sp, "pending") == set()
    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == every and inflight_ids(sp) == set()
    assert set(ok_counts(tmp_path / "effects.txt").values()) == {2}
    f = run_cli(tmp_path, "fsck", "--spool", sp, "-o", "json")
    assert f.returncode == 0, f.stdout


def test_replay_from_dead_requeues_with_error_summary(tmp_path: Path, sp: Path) -> None:
    """--from dead moves dead letters to pending, keeps the error's summary in the mark, drops the .error."""
    eid = put_event(sp, "dead")
    r = replay(tmp_path, sp, "--from", "dead", "--type", "system.metrics")
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout) == [eid]
    assert not (events_dir(sp, "dead") / f"{eid}.error").exists()
    mark = read_json(events_dir(sp, "pending") / f"{eid}.json")["metadata"]["replayed"]
    assert mark["from"] == "dead" and mark["error"]["reason"] == "attempts_exhausted"
    assert mark["error"]["error"] == "RuntimeError: boom" and mark["error"]["attempts"] == 3
    assert eid not in index_rows(sp)
