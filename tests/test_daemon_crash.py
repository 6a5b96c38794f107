"""poetctl daemon under SIGKILL and SIGTERM: nothing lost, effects bounded, follow-ups once,
crashed work recovered, live work never stolen, per-key order kept across a crash."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    DEADLINE,
    FOREVER_S,
    DaemonProc,
    Daemons,
    config_of,
    emit_executions,
    emit_metrics,
    events_dir,
    events_of_type,
    execution_payload,
    heartbeat_doc,
    heartbeat_of,
    ids_in,
    inflight_files,
    inflight_ids,
    line_count,
    names,
    ok_counts,
    owner_dir,
    read_effects,
    read_json,
    run_once,
    started_ids,
    status,
    wait_for,
    write_config,
)

from poetctl import EventRouter
from poetctl.backends.fs.running import head_size

SEED = 20240611
WORKERS = 4


def effects_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"EFFECTS_FILE": str(tmp_path / "effects.txt"), **extra}


def wait_started(sp: Path, d: DaemonProc) -> None:
    """Until the daemon has recovered and written its first heartbeat (it is processing)."""
    wait_for(lambda: heartbeat_of(sp, d.pid), f"daemon {d.pid} to start", procs=[d], interval=0.01)


def drain_with_once(tmp_path: Path, sp: Path, cfg: Path, env: dict[str, str], runs: int = 5) -> None:
    """Run ``daemon --once`` until it exits 0 (75 means retries are waiting)."""
    for _ in range(runs):
        r = run_once(tmp_path, sp, cfg, env=env)
        assert r.returncode in (0, 75), f"--once exited {r.returncode}: {r.stderr}"
        if r.returncode == 0 and not ids_in(sp, "pending"):
            return
    raise AssertionError(f"--once did not drain the spool in {runs} runs; pending={len(ids_in(sp, 'pending'))}")


# -- 2. SIGKILL at random moments -----------------------------------------------------------
# The crash test scales to the machine instead of assuming its speed: each daemon is
# SIGKILLed at a random moment only while it holds claimed, unhandled work, the spool is
# topped up before each start to several times what one daemon was measured to get
# through, and the assertion is on the number of kills that interrupted work.
KILLS_WANTED = 16  # SIGKILLs that must land while the daemon holds claimed, unhandled events
MAX_ROUNDS = 40  # daemons started at most to get them (a round with no work left kills nothing)
FIRST_BATCH = 2000  # events emitted before the first daemon; later top-ups follow the measured pace
HANDLER_COST_S = "0.001"  # a fixed floor per event, so no machine can outrun the kills by much


def claimed_unhandled(sp: Path, pid: int, wanted: set[str], handled: set[str]) -> set[str]:
    """Events of ``wanted`` in the in-flight directory of daemon ``pid`` whose effect is not recorded."""
    d = owner_dir(sp, pid)
    if d is None:
        return set()
    return {n[:-5] for n in names(d) if n.endswith(".json")} & wanted - handled


@pytest.mark.slow
@pytest.mark.daemon_modes("mover", "mover_inline")
def test_sigkill_at_random_moments_loses_nothing_and_bounds_duplicates(
    tmp_path: Path, sp: Path, daemons: Daemons
) -> None:
    """Repeated SIGKILLs while work remains: all processed, effects >= once, dups <= kills*workers, follow-ups once."""
    # A kill during a handler counts as an attempt, and a slow machine may kill the same head-of-key
    # event in round after round: more attempts than kills, so nothing here may be dead-lettered.
    cfg = write_config(tmp_path, workers=WORKERS, max_attempts=MAX_ROUNDS + 1)
    fn_names = [f"fn_{k:02d}" for k in range(20)]
    env = effects_env(tmp_path, FOLLOWUP="1", SLEEP_S=HANDLER_COST_S)
    effects = tmp_path / "effects.txt"
    rng = random.Random(SEED)
    originals: list[str] = []
    orig: set[str] = set()
    reserve = FIRST_BATCH
    kills = interrupted = 0
    rounds: list[str] = []  # one line per daemon, for the failure message and the -s output
    for _ in range(MAX_ROUNDS):
        if interrupted >= KILLS_WANTED:
            break
        handled = set(ok_counts(effects))
        short = reserve - len(orig - handled)
        if short > 0:  # top up: the next daemon must find more than it can finish before its kill
            originals += emit_executions(sp, fn_names, -(-short // len(fn_names)))
            orig = set(originals)
        d = daemons.start(sp, cfg, env=env)
        wait_started(sp, d)

        def holds_work_or_none_left(pid: int = d.pid, wanted: set[str] = orig) -> bool:
            done = set(ok_counts(effects))
            return bool(claimed_unhandled(sp, pid, wanted, done)) or not wanted - done

        wait_for(holds_work_or_none_left, f"daemon {d.pid} to claim work", procs=[d], interval=0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # the random moment; what it hit is measured below
        assert d.alive(), f"daemon exited on its own ({d.popen.returncode}): {d.stderr()}"
        held = claimed_unhandled(sp, d.pid, orig, set(ok_counts(effects)))
        if not held:
            # Nothing of ours in its hands: do not count a kill of an idle daemon; stop it
            # gracefully and give the next one more to do.
            assert d.stop() == 0, d.stderr()
            reserve *= 2
            rounds.append(f"no work held at the kill moment (reserve now {reserve})")
            continue
        d.kill()
        kills += 1
        after = set(ok_counts(effects))
        # Claimed before the kill, still in the dead daemon's directory and never handled:
        # this kill interrupted real work (the mover may still file what was finished).
        cut = held & claimed_unhandled(sp, d.pid, orig, after)
        interrupted += bool(cut)
        done_now = len(after) - len(handled)
        reserve = max(reserve, 4 * done_now)  # measured pace: the next daemon finds >= 4 rounds of work
        rounds.append(f"handled {done_now}, cut {len(cut)} claimed events, {len(orig - after)} left")
    print(f"kills={kills} interrupted={interrupted} events={len(originals)}\n" + "\n".join(rounds))
    assert interrupted >= KILLS_WANTED, (
        f"only {interrupted} of {kills} SIGKILLs interrupted claimed work in {len(rounds)} rounds:\n"
        + "\n".join(rounds)
    )

    drain_with_once(tmp_path, sp, cfg, env)

    processed = ids_in(sp, "processed")
    missing = orig - processed
    assert not missing, f"{len(missing)} events not processed, e.g. {sorted(missing)[:3]}"
    assert ids_in(sp, "dead") == set() and ids_in(sp, "corrupt") == set()
    assert ids_in(sp, "pending") == set()
    assert inflight_ids(sp) == set()

    counts = ok_counts(effects)
    never = orig - set(counts)
    assert not never, f"{len(never)} events' effects never happened, e.g. {sorted(never)[:3]}"
    assert set(counts) <= orig
    dups = sum(n - 1 for n in counts.values())
    print(f"duplicated effects={dups}")
    assert dups <= kills * WORKERS, f"{dups} duplicated effects after {kills} kills of {WORKERS} workers"

    follow = events_of_type(sp, "system.health")
    per_cause = Counter(f["causation_id"] for f in follow)
    assert set(per_cause) == orig, "every original event must have a follow-up, and only originals"
    extra = {c: n for c, n in per_cause.items() if n != 1}
    assert not extra, f"follow-ups emitted more than once: {list(extra.items())[:3]}"
    shutil.rmtree(sp)  # passed: spare later sessions from deleting this many files


# -- 8. crash recovery and live ownership --------------------------------------------------------
@pytest.mark.daemon_modes("inline", "mover", "mover_inline")
def test_sigkilled_daemons_inflight_events_are_recovered_by_the_next_one(
    tmp_path: Path, sp: Path, daemons: Daemons
) -> None:
    """Events claimed by a SIGKILLed daemon stay in its inflight dir until a new daemon returns and processes them."""
    cfg = write_config(tmp_path)
    ids = emit_executions(sp, [f"fn_{k}" for k in range(6)], 1)
    d = daemons.start(sp, cfg, env=effects_env(tmp_path, SLEEP_S=FOREVER_S))
    wait_for(lambda: inflight_ids(sp) == set(ids), "all 6 events claimed", procs=[d])
    mine = owner_dir(sp, d.pid)
    assert mine is not None
    d.kill()
    assert {n[:-5] for n in os.listdir(mine) if n.endswith(".json")} == set(ids), (
        "a SIGKILLed daemon's claimed events must stay in its inflight directory"
    )
    assert ids_in(sp, "pending") == set() and ids_in(sp, "processed") == set()
    doc = status(tmp_path, sp)
    assert doc["counts"]["inflight"] == len(ids)
    assert [e["alive"] for e in doc["daemons"]] == [False]

    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == set(ids)
    assert inflight_files(sp) == {}, "the dead owner's directory must be gone after recovery"
    assert ok_counts(tmp_path / "effects.txt") == Counter({i: 1 for i in ids})


def test_live_daemons_inflight_work_is_never_taken(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """daemon --once next to a live daemon leaves the live one's claimed events where they are."""
    cfg = write_config(tmp_path)
    ids = emit_executions(sp, [f"fn_{k}" for k in range(4)], 2)
    a = daemons.start(sp, cfg, env=effects_env(tmp_path, SLEEP_S=FOREVER_S))
    wait_for(lambda: inflight_ids(sp) == set(ids), "daemon A to claim all 8 events", procs=[a])
    a_dir = owner_dir(sp, a.pid)
    assert a_dir is not None
    before = {n for n in os.listdir(a_dir) if n.endswith(".json")}

    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert a.alive()
    assert {n for n in os.listdir(a_dir) if n.endswith(".json")} == before, "B moved A's in-flight events"
    assert ids_in(sp, "pending") == set() and ids_in(sp, "processed") == set()
    assert read_effects(tmp_path / "effects.txt") == []
    a.kill()


def keys_on_distinct_workers(n: int, workers: int = WORKERS) -> list[str]:
    """Function names whose partition keys land on different worker threads (crc32(key) % workers),
    so one sleeping handler does not hold up the others' events."""
    import zlib

    out: list[str] = []
    used: set[int] = set()
    for i in range(1000):
        w = zlib.crc32(f"payload.function_name=fn_{i}".encode()) % workers
        if w not in used:
            used.add(w)
            out.append(f"fn_{i}")
            if len(out) == n:
                return out
    raise AssertionError("no such keys")


def journal_mentions(sp: Path, pid: int, ids: list[str]) -> bool:
    """True when the daemon's completion journal has a line (finished handler or failed attempt) for every id.

    Only those lines count, not the running slots at the head of the file nor ``S`` lines: both
    name an event before its handler runs, so a kill then would be a death, not the outcome awaited here.
    """
    d = owner_dir(sp, pid)
    try:
        data = (d / "_journal").read_bytes() if d is not None else b""
    except FileNotFoundError:
        return False
    # Outcome lines only: an S line (a delivery began) is written before the handler runs.
    lines = "\n".join(
        ln for ln in data[head_size(data) :].decode(errors="replace").splitlines() if ln.startswith(("D\t", "F\t"))
    )
    return all(i in lines for i in ids)


@pytest.mark.daemon_modes("mover", "mover_inline")
def test_handlers_finished_before_a_crash_are_not_rerun(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """After a SIGKILL between two handlers of one event, redelivery runs only the unfinished handler."""
    cfg = write_config(tmp_path, workers=WORKERS)
    # One event per worker: the second handler never returns, so each worker can take only one
    # (a single inline worker: one event), and the test waits for every one of them to get there.
    workers = config_of(cfg)["workers"]
    ids = emit_executions(sp, keys_on_distinct_workers(workers, workers), 1)
    effects = tmp_path / "effects.txt"
    d = daemons.start(sp, cfg, env=effects_env(tmp_path, SECOND_SLEEP_S=FOREVER_S))
    wait_for(
        lambda: set(ok_counts(effects)) == set(ids) and journal_mentions(sp, d.pid, ids),
        f"the first handler to finish (and be journaled) for all {len(ids)} events",
        procs=[d],
    )
    d.kill()

    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path, SECOND_SLEEP_S="0"))
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == set(ids)
    assert ok_counts(effects) == Counter({i: 1 for i in ids}), "a finished handler ran again after the crash"
    assert ok_counts(effects, "second") == Counter({i: 1 for i in ids})
    assert not os.listdir(events_dir(sp, "records")), "records of finished events must be removed"


def test_retry_backoff_is_kept_across_a_crash(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """An event that failed just before a SIGKILL is not retried before its backoff has passed."""
    # A retry delay of >= 300 s: longer than this test can take on any machine, so a retry
    # in the second run can only mean the crash made the daemon forget the backoff.
    cfg = write_config(tmp_path, max_attempts=5, backoff_base=600.0, backoff_cap=600.0)
    bad = EventRouter(spool=sp).emit("function.execution", execution_payload("bad_fn"))
    (tmp_path / "fail.txt").write_text(f"{bad} always\n")
    env = effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt"))
    effects = tmp_path / "effects.txt"
    d = daemons.start(sp, cfg, env=env)
    wait_for(
        lambda: read_effects(effects) and journal_mentions(sp, d.pid, [bad]),
        "the first failed attempt to be journaled",
        procs=[d],
    )
    d.kill()

    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode in (0, 75), r.stderr
    calls = read_effects(effects)
    gaps = [b.t - a.t for a, b in pairwise(calls)]
    assert len(calls) == 1, (
        f"retried {gaps} s after the failure although the backoff floor is 300 s: "
        "the crash recovery forgot when the retry is due"
    )
    assert ids_in(sp, "pending") == {bad}
    rec = read_json(events_dir(sp, "records") / f"{bad}.json")
    assert len(rec["failures"]) == 1


def _retry_due_now(data: bytes) -> bytes:
    """A journal line or record with its retry time set to 0 (due at once)."""
    if data.startswith(b"F\t"):
        body = json.loads(data[2:])
        return b"F\t" + json.dumps([body[0], body[1], 0.0]).encode() + b"\n"
    if data.startswith(b"{"):
        rec = json.loads(data)
        rec["not_before"] = 0.0
        return json.dumps(rec).encode()
    return data


def test_recovering_the_same_dead_owner_twice_does_not_double_count_failures(
    tmp_path: Path, sp: Path, daemons: Daemons
) -> None:
    """A crash in the middle of recovery (record saved, event not yet moved) must not inflate the attempt count."""
    slow = write_config(tmp_path, name="slow.toml", max_attempts=3, backoff_base=600.0, backoff_cap=600.0)
    fast = write_config(tmp_path, name="fast.toml", max_attempts=3, backoff_base=0.01, backoff_cap=0.01)
    bad = EventRouter(spool=sp).emit("function.execution", execution_payload("bad_fn"))
    (tmp_path / "fail.txt").write_text(f"{bad} always\n")
    env = effects_env(tmp_path, FAIL_IDS_FILE=str(tmp_path / "fail.txt"))
    effects = tmp_path / "effects.txt"
    x = daemons.start(sp, slow, env=env)
    wait_for(
        lambda: read_effects(effects) and journal_mentions(sp, x.pid, [bad]),
        "the first failed attempt to be journaled",
        procs=[x],
    )
    x_dir = owner_dir(sp, x.pid)
    assert x_dir is not None
    journal = (x_dir / "_journal").read_bytes()
    assert x.stop() == 0, x.stderr()
    # Now: pending/<bad>.json plus records/<bad>.json holding attempt 1. Put back what a
    # recoverer killed between saving that record and moving the event would leave behind:
    # the dead owner's directory with its journal and the event still in it.
    assert (events_dir(sp, "records") / f"{bad}.json").exists()
    # The slow daemon's backoff (kept across crashes) is not what this test is about:
    # make the retry due now in both the journal and the saved record.
    journal = b"".join(_retry_due_now(line) for line in journal.splitlines(keepends=True))
    record_path = events_dir(sp, "records") / f"{bad}.json"
    record_path.write_bytes(_retry_due_now(record_path.read_bytes()))
    x_dir.mkdir()
    (x_dir / "_journal").write_bytes(journal)
    os.rename(events_dir(sp, "pending") / f"{bad}.json", x_dir / f"{bad}.json")

    codes = []
    for _ in range(10):
        r = run_once(tmp_path, sp, fast, env=env)
        codes.append(r.returncode)
        if r.returncode == 1:
            break
        assert r.returncode == 75, r.stderr
    assert codes[-1] == 1, f"never dead-lettered: {codes}"
    info = read_json(events_dir(sp, "dead") / f"{bad}.error")
    real = [c for c in read_effects(effects) if c.id == bad]
    assert len(real) == 3, (
        f"dead-lettered after {len(real)} real attempts (max_attempts 3); "
        f"history attempts {[h['attempt'] for h in info['history']]}"
    )
    assert [h["attempt"] for h in info["history"]] == [1, 2, 3]


# -- 9. graceful shutdown ------------------------------------------------------------------
@pytest.mark.daemon_modes("inline", "mover", "mover_inline")
def test_sigterm_finishes_current_work_and_hands_back_the_rest(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """SIGTERM mid-run: exit 0, each event processed (with its effect) or back in pending; a rerun finishes."""
    cfg = write_config(tmp_path)
    # One key, 0.3 s each: 60 s of work, so the SIGTERM sent after the third effect lands mid-run
    # even if this process stalls for most of a minute.
    ids = emit_metrics(sp, 200)
    effects = tmp_path / "effects.txt"
    d = daemons.start(sp, cfg, env=effects_env(tmp_path, SLEEP_S="0.3"))
    wait_for(lambda: line_count(effects) >= 3, "the first 3 effects", procs=[d])
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.stderr()

    processed, pending = ids_in(sp, "processed"), ids_in(sp, "pending")
    assert inflight_ids(sp) == set()
    assert not processed & pending
    assert processed | pending == set(ids), "an event was lost or duplicated by the shutdown"
    assert pending, "the shutdown came early enough that some events must be left"
    counts = ok_counts(effects)
    assert set(counts) == processed, "processed events must be exactly those whose effect was recorded"
    assert set(counts.values()) == {1}

    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == set(ids)
    assert ok_counts(effects) == Counter({i: 1 for i in ids})


@pytest.mark.daemon_modes("inline", "mover", "mover_inline")
def test_second_sigterm_exits_at_once_with_130_and_nothing_is_lost(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """A second SIGTERM during shutdown exits 130 without waiting for handlers; a new daemon recovers all."""
    cfg = write_config(tmp_path)
    ids = emit_executions(sp, [f"fn_{k}" for k in range(8)], 1)
    started = tmp_path / "started.txt"
    # The handlers never finish: a daemon that waited for them would never exit.
    d = daemons.start(sp, cfg, env=effects_env(tmp_path, SLEEP_S=FOREVER_S, STARTED_FILE=str(started)))
    wait_for(
        lambda: inflight_ids(sp) == set(ids) and started_ids(started),
        "all events claimed and a handler running",
        procs=[d],
    )
    # Two SIGTERMs that arrive before Python ran its handler for the first are seen as one,
    # and the daemon shows nothing when it starts its graceful stop. So keep sending SIGTERM
    # until it exits: every one after the first that took effect must end it at once.
    sent = 0
    while d.alive():
        assert sent < DEADLINE / 0.2, f"daemon {d.pid} ignored {sent} SIGTERMs; log:\n{d.stderr()}"
        d.signal(signal.SIGTERM)
        sent += 1
        try:
            d.popen.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    rc = d.wait()
    assert rc == 130, f"expected an immediate exit with 130 after {sent} SIGTERMs, got {rc}: {d.stderr()}"
    assert sent >= 2, "the first SIGTERM must start a graceful stop (which waits for handlers), not end the daemon"
    assert read_effects(tmp_path / "effects.txt") == [], "no handler can have finished"

    r = run_once(tmp_path, sp, cfg, env=effects_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == set(ids)
    assert inflight_ids(sp) == set() and ids_in(sp, "pending") == set()
    assert ok_counts(tmp_path / "effects.txt") == Counter({i: 1 for i in ids})


# -- ordering across daemons after a crash --------------------------------------------------------
def test_per_key_order_survives_a_crash_of_another_daemon(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """When daemon B dies holding old events of keys K1 and K2, daemon A handles them before newer ones."""
    import zlib

    from poetctl.daemon.core import BUCKETS

    def bucket(fn: str) -> int:
        return zlib.crc32(f"payload.function_name={fn}".encode()) % BUCKETS

    k1 = "order_k1"
    k2 = next(f"order_k2_{i}" for i in range(100) if bucket(f"order_k2_{i}") != bucket(k1))
    k3 = next(f"order_k3_{i}" for i in range(100) if bucket(f"order_k3_{i}") not in (bucket(k1), bucket(k2)))
    # Long rescans: A must meet the dead owner's buckets through claiming, not through a timed rescan.
    cfg_a = write_config(tmp_path, name="a.toml", rescan_interval=60.0)
    cfg_b = write_config(tmp_path, name="b.toml", max_inflight=2)  # B claims the old events only
    router = EventRouter(spool=sp)
    effects = tmp_path / "effects.txt"

    b = daemons.start(sp, cfg_b, env=effects_env(tmp_path, SLEEP_S=FOREVER_S))
    old = router.emit_many(
        [("function.execution", execution_payload(k1, 0)), ("function.execution", execution_payload(k2, 0))]
    )
    wait_for(lambda: inflight_ids(sp) == set(old), "B to claim the old K1 and K2 events", procs=[b])
    a = daemons.start(sp, cfg_a, env=effects_env(tmp_path))
    wait_started(sp, a)
    new = router.emit_many(
        [("function.execution", execution_payload(k1, 1)), ("function.execution", execution_payload(k2, 1))]
    )

    def a_has_seen_both_or_took_one() -> bool:
        # pending_seen comes from A's latest listing of pending, which it makes just before
        # trying to claim what it listed; the heartbeat is written after that attempt. An event
        # gone from pending is the violation itself: stop waiting, the assertion reports it.
        doc = heartbeat_doc(sp, a.pid)
        return (doc is not None and doc["pending_seen"] >= len(new)) or not set(new) <= ids_in(sp, "pending")

    wait_for(a_has_seen_both_or_took_one, "A to list the new events (its heartbeat's pending_seen)", procs=[a, b])
    assert ids_in(sp, "pending") == set(new), "A claimed events whose keys a live daemon holds"
    b.kill()
    wake = router.emit("function.execution", execution_payload(k3, 0))  # any new file wakes A up
    everything = set(old) | set(new) | {wake}
    wait_for(lambda: ids_in(sp, "processed") == everything, "A to process all 5 events", procs=[a])
    assert a.stop() == 0, a.stderr()

    order = [c.id for c in read_effects(effects) if c.ok]
    for key, (o, n) in {k1: (old[0], new[0]), k2: (old[1], new[1])}.items():
        assert order.index(o) < order.index(n), (
            f"key {key}: the newer event was handled before the older one recovered from the dead daemon"
        )
