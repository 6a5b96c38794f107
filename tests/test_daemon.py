"""poetctl daemon on real processes: draining, retries and order, quarantine, expiry,
heartbeats, follow-up events and handler loading."""

from __future__ import annotations

import json
import os
import shutil
import time
from itertools import pairwise
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    EFFECTS,
    NO_REGISTER,
    NOOP,
    Daemons,
    count_json,
    emit_executions,
    emit_metrics,
    events_dir,
    events_of_type,
    execution_payload,
    heartbeat_of,
    ids_in,
    inflight_ids,
    read_effects,
    read_json,
    run_cli,
    run_once,
    status,
    wait_for,
    write_config,
)

from poetctl import EventRouter
from poetctl.event import compute_checksum
from poetctl.ids import derived_id


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """poet.toml with fast backoff, max_attempts 3 and short rescans."""
    return write_config(tmp_path)


def effects_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"EFFECTS_FILE": str(tmp_path / "effects.txt"), **extra}


# -- 1. --once drains ------------------------------------------------------------------
@pytest.mark.daemon_modes("inline", "mover", "mover_inline")
def test_once_drains_everything_and_status_counts_it(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """daemon --once with a no-op handler moves every pending event to processed and exits 0."""
    ids = emit_metrics(sp, 300) + emit_executions(sp, ["fa", "fb", "fc"], 20)
    r = run_once(tmp_path, sp, cfg, handlers=[NOOP])
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == set(ids)
    assert ids_in(sp, "pending") == set()
    assert inflight_ids(sp) == set()
    assert ids_in(sp, "dead") == set() and ids_in(sp, "corrupt") == set()
    doc = status(tmp_path, sp)
    expected = {"pending": 0, "inflight": 0, "processed": len(ids), "dead": 0, "corrupt": 0}
    assert {k: doc["counts"].get(k) for k in expected} == expected
    assert doc["daemons"] == [], "a daemon that exited cleanly must remove its heartbeat"


def test_once_drains_a_backlog_larger_than_the_listing_window(tmp_path: Path, sp: Path) -> None:
    """--once keeps listing until pending is empty even when the backlog exceeds [daemon] window."""
    cfg = write_config(tmp_path, window=5, rescan_interval=30.0)
    ids = emit_executions(sp, ["fa", "fb", "fc"], 20)
    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path))
    assert r.returncode == 0, r.stderr
    left = ids_in(sp, "pending")
    assert not left, f"--once exited 0 with {len(left)} of {len(ids)} events still pending"
    assert ids_in(sp, "processed") == set(ids)
    order = [c.id for c in read_effects(tmp_path / "effects.txt") if c.ok]
    key = {i: read_json(events_dir(sp, "processed") / f"{i}.json")["payload"]["function_name"] for i in ids}
    for fn in ("fa", "fb", "fc"):
        mine = [i for i in ids if key[i] == fn]
        assert [i for i in order if i in set(mine)] == mine, f"key {fn} handled out of order"


@pytest.mark.daemon_modes("mover", "mover_inline")
def test_event_without_subscriber_goes_straight_to_processed(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """An event type nobody subscribes to is moved to processed/ without running any handler."""
    router = EventRouter(spool=sp)
    handled = router.emit("function.execution", execution_payload("fa"))
    unhandled = router.emit("system.health", {"service": "x", "status": "healthy"})
    env = effects_env(tmp_path, EFFECT_TYPES="function.execution")
    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == {handled, unhandled}
    assert [e.id for e in read_effects(tmp_path / "effects.txt")] == [handled]


# -- 5. retries, dead letters, poison events, order -------------------------------------
@pytest.mark.daemon_modes("inline")
def test_dead_letter_after_max_attempts_with_backoff_spacing(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """A handler that always fails is tried exactly max_attempts times, spaced by at least the backoff floor."""
    base, cap, max_attempts = 0.08, 0.25, 4
    cfg = write_config(tmp_path, backoff_base=base, backoff_cap=cap, max_attempts=max_attempts)
    router = EventRouter(spool=sp)
    bad = router.emit("function.execution", execution_payload("bad_fn"))
    good = router.emit("function.execution", execution_payload("good_fn"))
    (tmp_path / "fail.txt").write_text(f"{bad} always\n")
    d = daemons.start(sp, cfg, env=effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt")))
    dead = events_dir(sp, "dead")
    wait_for(
        lambda: (dead / f"{bad}.json").exists() and good in ids_in(sp, "processed"),
        "the failing event in dead/ and the good one in processed/",
        procs=[d],
    )
    assert d.stop() == 0, d.stderr()

    info = read_json(dead / f"{bad}.error")
    assert info["reason"] == "attempts_exhausted"
    hist = info["history"]
    assert [h["attempt"] for h in hist] == list(range(1, max_attempts + 1))
    assert all(h["handler"] == "effects" and "planned failure" in h["error"] for h in hist)
    for prev, nxt in pairwise(hist):
        floor = min(cap, base * 2 ** (prev["attempt"] - 1)) / 2
        gap = nxt["at"] - prev["at"]
        assert gap >= floor - 1e-6, f"attempt {nxt['attempt']} came {gap:.4f}s after the previous; floor {floor}"
    calls = [e for e in read_effects(tmp_path / "effects.txt") if e.id == bad]
    assert len(calls) == max_attempts and not any(c.ok for c in calls)
    assert bad not in ids_in(sp, "pending") | ids_in(sp, "processed") | inflight_ids(sp)
    assert not (events_dir(sp, "records") / f"{bad}.json").exists(), "a dead letter keeps no pending record"


def test_once_exit_code_is_1_after_a_dead_letter(tmp_path: Path, sp: Path) -> None:
    """daemon --once exits 1 when it dead-lettered something (max_attempts = 1), and 0 for the good events."""
    cfg = write_config(tmp_path, max_attempts=1)
    router = EventRouter(spool=sp)
    bad = router.emit("function.execution", execution_payload("bad_fn"))
    good = router.emit("function.execution", execution_payload("good_fn"))
    (tmp_path / "fail.txt").write_text(f"{bad} always\n")
    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt")))
    assert r.returncode == 1, r.stderr
    assert ids_in(sp, "dead") == {bad}
    assert ids_in(sp, "processed") == {good}
    assert read_json(events_dir(sp, "dead") / f"{bad}.error")["attempts"] == 1


def test_attempts_are_counted_across_once_runs(tmp_path: Path, sp: Path) -> None:
    """Repeated --once runs keep counting a failing event's attempts and dead-letter it after exactly max_attempts."""
    cfg = write_config(tmp_path, max_attempts=3, backoff_base=0.01, backoff_cap=0.01)
    bad = EventRouter(spool=sp).emit("function.execution", execution_payload("bad_fn"))
    (tmp_path / "fail.txt").write_text(f"{bad} always\n")
    env = effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt"))
    codes = []
    for _ in range(10):
        r = run_once(tmp_path, sp, cfg, env=env)
        codes.append(r.returncode)
        assert r.returncode in (1, 75), r.stderr
        if r.returncode == 1:
            break
    assert codes[-1] == 1, f"never dead-lettered; exit codes {codes}"
    calls = [c for c in read_effects(tmp_path / "effects.txt") if c.id == bad]
    assert len(calls) == 3, f"{len(calls)} real attempts for max_attempts = 3 (exit codes {codes})"
    info = read_json(events_dir(sp, "dead") / f"{bad}.error")
    assert [h["attempt"] for h in info["history"]] == [1, 2, 3]


@pytest.mark.daemon_modes("inline")
def test_once_exits_75_while_a_handed_back_event_waits_for_its_retry(
    tmp_path: Path, sp: Path, daemons: Daemons
) -> None:
    """--once leaves an event whose retry is not yet due in pending, untried, and says so with exit code 75."""
    # A retry delay of >= 300 s, longer than this test takes on any machine: "not yet due" holds.
    cfg = write_config(tmp_path, max_attempts=5, backoff_base=600.0, backoff_cap=600.0)
    router = EventRouter(spool=sp)
    bad = router.emit("function.execution", execution_payload("bad_fn"))
    (tmp_path / "fail.txt").write_text(f"{bad} always\n")
    env = effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt"))
    d = daemons.start(sp, cfg, env=env)
    wait_for(lambda: read_effects(tmp_path / "effects.txt"), "the first failed attempt", procs=[d])
    assert d.stop() == 0, d.stderr()
    rec = read_json(events_dir(sp, "records") / f"{bad}.json")
    assert rec["not_before"] >= rec["failures"][0]["at"] + 300 - 1e-6

    good = router.emit("function.execution", execution_payload("good_fn"))
    r = run_once(tmp_path, sp, cfg, env=env)
    assert ids_in(sp, "processed") == {good}
    assert ids_in(sp, "pending") == {bad}
    assert len(read_effects(tmp_path / "effects.txt")) == 2, "the not-yet-due retry must not run"
    assert r.returncode == 75, f"--once must exit 75 while an event waits for a retry, got {r.returncode}"


def test_once_hands_back_a_retrying_event_and_the_events_queued_behind_it(tmp_path: Path, sp: Path) -> None:
    """--once stops when only a not-yet-due retry and its own key's later events remain, exiting 75."""
    # Retries 15-30 s apart: no stall of the daemon makes one due before --once decides to
    # stop, while a daemon that sits through the schedule still dead-letters well within the
    # run's deadline, so the message below can say so.
    cfg = write_config(tmp_path, max_attempts=3, backoff_base=30.0, backoff_cap=30.0)
    router = EventRouter(spool=sp)
    bad = router.emit("function.execution", execution_payload("bad_fn"))
    behind = router.emit_many([("function.execution", execution_payload("bad_fn", i)) for i in (1, 2)])
    (tmp_path / "fail.txt").write_text(f"{bad} always\n")
    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt")))
    calls = read_effects(tmp_path / "effects.txt")
    assert ids_in(sp, "dead") == set(), (
        f"--once sat through the whole backoff schedule "
        f"({sum(c.id == bad for c in calls)} attempts) "
        "instead of handing the retrying event back"
    )
    assert [c.id for c in calls] == [bad]
    assert ids_in(sp, "pending") == {bad, *behind}
    assert r.returncode == 75, r.stderr


@pytest.mark.daemon_modes("inline")
def test_poison_event_stalls_only_its_own_key(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """While one event keeps failing, later events of other keys are processed; its own key waits behind it."""
    cfg = write_config(tmp_path, max_attempts=1000, backoff_base=0.2, backoff_cap=0.4)
    router = EventRouter(spool=sp)
    poison = router.emit("function.execution", execution_payload("poison_fn"))
    behind = router.emit_many([("function.execution", execution_payload("poison_fn", i)) for i in range(1, 4)])
    others = emit_executions(sp, [f"other_{k}" for k in range(10)], 3)
    (tmp_path / "fail.txt").write_text(f"{poison} always\n")
    effects = tmp_path / "effects.txt"
    d = daemons.start(sp, cfg, env=effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt")))

    def settled() -> bool:
        calls = read_effects(effects)
        return len([c for c in calls if c.id == poison]) >= 3 and set(others) <= {c.id for c in calls if c.ok}

    wait_for(settled, "3 failed attempts of the poison event and every other key processed", procs=[d])
    assert set(others) <= ids_in(sp, "processed")
    assert d.alive(), "the daemon must still be running (retrying the poison event)"
    assert d.stop() == 0, d.stderr()

    assert poison in ids_in(sp, "pending"), "a graceful stop hands the retrying event back to pending"
    assert set(behind) <= ids_in(sp, "pending"), "events behind a failing one of the same key must wait"
    assert not {c.id for c in read_effects(effects)} & set(behind)
    assert inflight_ids(sp) == set() and ids_in(sp, "dead") == set()
    rec = read_json(events_dir(sp, "records") / f"{poison}.json")
    fails = [c for c in read_effects(effects) if c.id == poison]
    assert len(rec["failures"]) == len(fails) >= 3
    assert all(f["handler"] == "effects" for f in rec["failures"])
    assert [f["attempt"] for f in rec["failures"]] == list(range(1, len(fails) + 1))


@pytest.mark.daemon_modes("inline", "mover", "mover_inline")
def test_per_key_order_holds_through_retries(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """e1..e10 of one key are handled in emit order even though e3 fails twice before succeeding."""
    cfg = write_config(tmp_path, max_attempts=5)
    router = EventRouter(spool=sp)
    seq: list[str] = []
    noise: list[str] = []
    for i in range(10):
        seq += router.emit_many([("function.execution", execution_payload("ordered_fn", i))])
        noise += router.emit_many([("function.execution", execution_payload(f"noise_{i % 3}", i))])
    (tmp_path / "fail.txt").write_text(f"{seq[2]} 2\n")
    effects = tmp_path / "effects.txt"
    d = daemons.start(sp, cfg, env=effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt")))
    wait_for(lambda: set(seq + noise) <= ids_in(sp, "processed"), "all 20 events processed", procs=[d])
    assert d.stop() == 0, d.stderr()

    calls = [c for c in read_effects(effects) if c.id in set(seq)]
    assert [c.id for c in calls if c.ok] == seq, "successful calls of the key must follow emit order"
    assert [c.ok for c in calls if c.id == seq[2]] == [False, False, True]
    e3_success = next(i for i, c in enumerate(calls) if c.id == seq[2] and c.ok)
    early = [c.id for c in calls[:e3_success] if c.id in seq[3:]]
    assert early == [], f"e4..e10 ran before e3 succeeded: {early}"
    assert ids_in(sp, "dead") == set()


# -- 6. quarantine --------------------------------------------------------------------
@pytest.mark.daemon_modes("inline")
def test_corrupt_files_are_quarantined_with_reasons_and_never_deleted(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """Bad JSON or checksum, schema violations, symlinks, FIFOs, directories, bad names go to corrupt/ with a reason."""
    router = EventRouter(spool=sp)
    pending = events_dir(sp, "pending")
    good = router.emit_many([("function.execution", execution_payload(f"g{i}")) for i in range(3)])

    def built() -> dict:
        ev, _ = router.build("function.execution", execution_payload("x"))
        return ev.to_dict()

    files: dict[str, tuple[str, bytes | None]] = {}  # name -> (expected reason, original bytes)
    d = built()
    files[f"{d['id']}.json"] = ("bad_json", b'{"id": "' + d["id"].encode() + b'", "type": ')
    d = built()
    d["payload"]["version"] = "v2"  # content changed, checksum not
    files[f"{d['id']}.json"] = ("bad_checksum", json.dumps(d).encode())
    d = built()
    d["payload"]["metrics"] = "fast"  # schema violation, checksum recomputed
    d["checksum"] = compute_checksum(d)
    files[f"{d['id']}.json"] = ("bad_schema", json.dumps(d).encode())
    d = built()
    other = built()["id"]
    files[f"{other}.json"] = ("wrong_name", json.dumps(d).encode())  # valid event under another id
    d = built()
    d["type"] = "nosuch.thing"
    d["checksum"] = compute_checksum(d)
    files[f"{d['id']}.json"] = ("unknown_type", json.dumps(d).encode())
    d = built()
    files[f"{d['id']}.json"] = ("too_large", b" " * (1024 * 1024 + 1) + json.dumps(d).encode())
    d = built()
    deep: dict = {}
    d["payload"]["details"] = deep
    for _ in range(70):  # deeper than MAX_DEPTH; the checksum is right, so only the depth rule catches it
        deep["x"] = deep = {}
    d["checksum"] = compute_checksum(d)
    files[f"{d['id']}.json"] = ("bad_json", json.dumps(d).encode())
    for name, (_, data) in files.items():
        (pending / name).write_bytes(data)  # type: ignore[arg-type]

    outside = tmp_path / "outside"
    outside.mkdir()
    target_ev = built()
    target = outside / f"{target_ev['id']}.json"
    target_bytes = json.dumps(target_ev).encode()
    target.write_bytes(target_bytes)
    os.symlink(target, pending / target.name)
    files[target.name] = ("not_regular", None)
    (pending / "x.json").mkdir()
    files["x.json"] = ("not_regular", None)
    fifo = f"{built()['id']}.json"
    os.mkfifo(pending / fifo)  # reading it must neither block nor be trusted
    files[fifo] = ("not_regular", None)
    (pending / "hello.txt").write_bytes(b"hello\n")
    files["hello.txt"] = ("bad_name", b"hello\n")

    r = run_once(tmp_path, sp, cfg, handlers=[NOOP])
    assert r.returncode == 1, f"--once must exit 1 after quarantining; got {r.returncode}: {r.stderr}"
    corrupt = events_dir(sp, "corrupt")
    assert ids_in(sp, "processed") == set(good)
    assert os.listdir(pending) == []
    for name, (reason, data) in files.items():
        q = corrupt / name
        assert os.path.lexists(q), f"{name} is not in corrupt/"
        info = read_json(corrupt / f"{name}.reason")
        assert info["reason"] == reason, f"{name}: reason {info['reason']!r}, expected {reason!r}"
        if data is not None:
            assert q.read_bytes() == data, f"{name} was altered in quarantine"
    assert (corrupt / target.name).is_symlink() and os.readlink(corrupt / target.name) == str(target)
    assert target.read_bytes() == target_bytes, "the symlink's target outside the spool was touched"
    assert (corrupt / "x.json").is_dir()
    assert status(tmp_path, sp)["counts"]["corrupt"] == len(files)


# -- 7. expiry ------------------------------------------------------------------------
def test_expired_events_are_dead_lettered_without_running_handlers(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """An event past its expires_at goes to dead/ with reason 'expired'; its handler never runs."""
    router = EventRouter(spool=sp)
    handled_type = router.emit("function.execution", execution_payload("fa"), expires_at=time.time() - 10)
    no_subscriber = router.emit("system.health", {"service": "x", "status": "healthy"}, expires_at=time.time() - 10)
    fresh = router.emit("function.execution", execution_payload("fa", 1), expires_at=time.time() + 3600)
    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path))
    assert r.returncode == 1, f"--once must exit 1 after dead-lettering expired events: {r.stderr}"
    assert ids_in(sp, "dead") == {handled_type, no_subscriber}
    assert ids_in(sp, "processed") == {fresh}
    for eid in (handled_type, no_subscriber):
        info = read_json(events_dir(sp, "dead") / f"{eid}.error")
        assert info["reason"] == "expired"
    assert [e.id for e in read_effects(tmp_path / "effects.txt")] == [fresh]


# -- 10. heartbeat ----------------------------------------------------------------------
def test_status_shows_live_then_stale_daemon_and_stale_entry_is_cleared(
    tmp_path: Path, sp: Path, daemons: Daemons
) -> None:
    """status lists a running daemon as alive with its pid and counts, a SIGKILLed one as stale, then not at all."""
    cfg = write_config(tmp_path, heartbeat_interval=0.2)
    ids = emit_executions(sp, ["fa", "fb"], 10)
    d1 = daemons.start(sp, cfg, env=effects_env(tmp_path))

    def entry_with_counts() -> dict | None:
        for e in status(tmp_path, sp)["daemons"]:
            if e["pid"] == d1.pid and e["counts"]["processed"] == len(ids):
                return e
        return None

    e = wait_for(entry_with_counts, "status to show the daemon with all events counted", procs=[d1])
    assert e["alive"] is True
    assert e["inflight"] == 0 and e["counts"]["dead"] == 0
    owner1 = e["owner"]

    d1.kill()
    entries = {x["owner"]: x for x in status(tmp_path, sp)["daemons"]}
    assert owner1 in entries and entries[owner1]["alive"] is False, f"expected a stale entry: {entries}"

    d2 = daemons.start(sp, cfg, env=effects_env(tmp_path))
    wait_for(lambda: heartbeat_of(sp, d2.pid), "the second daemon's heartbeat", procs=[d2])

    def stale_gone() -> dict | None:
        doc = status(tmp_path, sp)
        return doc if owner1 not in {x["owner"] for x in doc["daemons"]} else None

    doc = wait_for(stale_gone, "the stale entry to disappear", procs=[d2])
    assert [x["pid"] for x in doc["daemons"]] == [d2.pid]
    assert doc["daemons"][0]["alive"] is True
    assert d2.stop() == 0, d2.stderr()
    assert status(tmp_path, sp)["daemons"] == []


# -- 11. handler emits -------------------------------------------------------------------
@pytest.mark.daemon_modes("inline", "mover", "mover_inline")
def test_handler_follow_up_is_linked_deterministic_and_deduplicated_on_replay(
    tmp_path: Path, sp: Path, cfg: Path
) -> None:
    """A handler's emit gets causation_id = cause, inherits correlation_id, and a replay adds no second copy."""
    router = EventRouter(spool=sp)
    cause_id = router.emit("function.execution", execution_payload("fa"), correlation_id="corr-42")
    env = effects_env(tmp_path, FOLLOWUP="1")
    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode == 0, r.stderr
    follow = events_of_type(sp, "system.health")
    assert len(follow) == 1
    f = follow[0]
    cause = read_json(events_dir(sp, "processed") / f"{cause_id}.json")
    assert f["causation_id"] == cause_id
    assert f["correlation_id"] == "corr-42"
    assert f["id"] == derived_id(cause_id, cause["timestamp"], "followup", 0)
    assert f["id"] in ids_in(sp, "processed")

    # Replay the cause: same file back in pending under the same name.
    shutil.copy2(events_dir(sp, "processed") / f"{cause_id}.json", events_dir(sp, "pending") / f"{cause_id}.json")
    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode == 0, r.stderr
    assert [c.id for c in read_effects(tmp_path / "effects.txt") if c.ok] == [cause_id, cause_id], (
        "the replay must have run the handlers again"
    )
    again = events_of_type(sp, "system.health", states=("pending", "processed", "dead", "corrupt"))
    assert [x["id"] for x in again] == [f["id"]], "a replayed cause must not produce a second follow-up"
    assert count_json(events_dir(sp, "processed")) == 2


# -- 12. bad handler configuration ------------------------------------------------------------
def test_unknown_handler_module_exits_2_naming_it(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """--handlers with a module that does not exist is a usage error (2) naming the module."""
    r = run_cli(
        tmp_path,
        "daemon",
        "--once",
        "--no-builtin-handlers",
        "--spool",
        sp,
        "--config",
        cfg,
        "--handlers",
        "nosuchmodule_xyz",
    )
    assert r.returncode == 2, r.stderr
    assert "nosuchmodule_xyz" in r.stderr
    assert "Traceback" not in r.stderr


def test_handler_module_without_register_exits_2(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """A handler module with no register(router) is a usage error (2) naming the module."""
    emit_metrics(sp, 1)
    r = run_once(tmp_path, sp, cfg, handlers=[NO_REGISTER])
    assert r.returncode == 2, r.stderr
    assert "no_register" in r.stderr and "register" in r.stderr
    assert count_json(events_dir(sp, "pending")) == 1, "nothing may be processed when loading failed"


def test_effects_helper_subscribes_the_types_the_tests_use(tmp_path: Path, sp: Path, cfg: Path) -> None:
    """Sanity of the test handler: one ok line per handled event, carrying the daemon's pid."""
    ids = emit_executions(sp, ["fa"], 3)
    r = run_once(tmp_path, sp, cfg, handlers=[EFFECTS], env=effects_env(tmp_path))
    assert r.returncode == 0, r.stderr
    calls = read_effects(tmp_path / "effects.txt")
    assert [c.id for c in calls] == ids and all(c.ok and c.handler == "effects" for c in calls)
    assert len({c.pid for c in calls}) == 1
