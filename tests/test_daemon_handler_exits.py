"""Handlers that end the process: os._exit, SIGKILL (the OOM killer), sys.exit, KeyboardInterrupt.

A delivery is counted durably before the handler runs, so a handler that kills
the daemon uses up an attempt like one that raises: after ``max_attempts``
deaths the event is dead-lettered ("the daemon died while handling it") and
its partition key moves on. ``sys.exit()`` and ``KeyboardInterrupt`` raised by a
handler are that handler's failure, never the daemon's shutdown.
"""

from __future__ import annotations

import json
import signal
import zlib
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    HELPERS,
    Daemons,
    emit_executions,
    events_dir,
    ids_in,
    inflight_ids,
    read_effects,
    run_once,
    wait_for,
    write_config,
)

from poetctl.backends.fs.journal import JOURNAL, Journal, journal_record, parse_journal, read_journal
from poetctl.daemon.core import BUCKETS
from poetctl.daemon.retries import DIED

ENDERS = HELPERS / "enders.py"
MAX_ATTEMPTS = 3


def worker_of(fn: str, workers: int) -> int:
    """The worker a function name's events go to (the daemon's default partition key)."""
    return zlib.crc32(f"payload.function_name={fn}".encode()) % BUCKETS % workers


def names_for(workers: int) -> tuple[str, list[str]]:
    """A doomed function name and two others handled by other workers (all distinct when inline)."""
    doom = "doom"
    others = [f"f{i}" for i in range(200) if workers == 1 or worker_of(f"f{i}", workers) != worker_of(doom, workers)]
    return doom, others[:2]


def setup(
    tmp_path: Path, sp: Path, how: str, workers: int, **config: object
) -> tuple[Path, dict[str, str], str, list[str], list[str]]:
    """Emit 3 events for each of three keys; the doomed key's first event ends its handler ``how``."""
    doom, others = names_for(workers)
    ids = emit_executions(sp, [doom, *others], 3)
    doomed = [i for n, i in enumerate(ids) if n % 3 == 0]
    victim = doomed[0]
    (tmp_path / "enders.txt").write_text(f"{victim} {how}\n")
    cfg = write_config(tmp_path, workers=workers, max_attempts=MAX_ATTEMPTS, **config)
    env = {"EFFECTS_FILE": str(tmp_path / "effects.txt"), "ENDER_IDS_FILE": str(tmp_path / "enders.txt")}
    if workers > 1:
        # Nothing else may be running when the process dies: wait for the other keys first.
        env["ENDER_WAIT_OK"] = str(len(ids) - len(doomed))
        env["ENDER_PROCESSED_DIR"] = str(sp / "events" / "processed")
    return cfg, env, victim, ids, doomed


def calls(tmp_path: Path, event_id: str) -> int:
    return sum(1 for e in read_effects(tmp_path / "effects.txt") if e.id == event_id)


@pytest.mark.parametrize(
    ("how", "workers", "mover_backlog"),
    [("exit", 1, -1), ("sigkill", 1, 0), ("exit", 3, 0), ("sigkill", 3, -1)],
    ids=["os._exit-inline", "sigkill-inline-mover", "os._exit-threads-mover", "sigkill-threads"],
)
def test_handler_that_kills_the_daemon_is_dead_lettered_after_max_attempts(
    tmp_path: Path, sp: Path, how: str, workers: int, mover_backlog: int
) -> None:
    """Each --once run dies on the event; after max_attempts deaths it goes to dead/ and everything else is handled."""
    cfg, env, victim, ids, doomed = setup(tmp_path, sp, how, workers, mover_backlog=mover_backlog)
    for run in range(1, MAX_ATTEMPTS + 1):
        r = run_once(tmp_path, sp, cfg, handlers=[ENDERS], env=env)
        assert r.returncode == (1 if how == "exit" else -signal.SIGKILL), r.stderr
        assert "daemon stopped" not in r.stderr, f"run {run} was expected to die in the handler:\n{r.stderr}"
        assert calls(tmp_path, victim) == run, f"run {run} must have delivered the event once more"
        assert victim not in ids_in(sp, "dead")
    r = run_once(tmp_path, sp, cfg, handlers=[ENDERS], env=env)
    assert r.returncode == 1, f"the run after {MAX_ATTEMPTS} deaths must dead-letter the event:\n{r.stderr}"
    assert calls(tmp_path, victim) == MAX_ATTEMPTS, "an exhausted event must not be run again"
    assert ids_in(sp, "dead") == {victim}
    err = json.loads((events_dir(sp, "dead") / f"{victim}.error").read_text())
    assert err["reason"] == "daemon_died"
    assert DIED in err["error"] and DIED == "the daemon died while handling it"
    assert err["attempts"] == MAX_ATTEMPTS and err["handler"] == "enders"
    assert ids_in(sp, "processed") == set(ids) - {victim}
    assert ids_in(sp, "pending") == set() and inflight_ids(sp) == set()
    ok = [e.id for e in read_effects(tmp_path / "effects.txt") if e.ok]
    assert sorted(ok) == sorted(set(ids) - {victim}), "every other event is handled exactly once"
    assert ok.index(doomed[1]) < ok.index(doomed[2]), "the doomed key's later events keep their order"
    assert f'"event_id":"{victim}"' in r.stderr and "daemon_died" in r.stderr, "the dead letter is logged (JSON)"


@pytest.mark.parametrize("workers", [1, 3], ids=["inline", "threads"])
@pytest.mark.parametrize("how", ["sysexit", "sysexit0", "keyboard"])
def test_sys_exit_and_keyboard_interrupt_in_a_handler_are_failures(
    tmp_path: Path, sp: Path, daemons: Daemons, how: str, workers: int
) -> None:
    """sys.exit()/KeyboardInterrupt from a handler are retried and dead-lettered; the daemon handles the rest."""
    cfg, env, victim, ids, doomed = setup(tmp_path, sp, how, workers)
    env.pop("ENDER_WAIT_OK", None)  # the process survives: nothing to wait for
    d = daemons.start(sp, cfg, handlers=[ENDERS], env=env)
    wait_for(lambda: ids_in(sp, "dead") == {victim}, "the event to be dead-lettered", procs=[d])
    wait_for(lambda: ids_in(sp, "processed") == set(ids) - {victim}, "every other event", procs=[d])
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.stderr()
    assert "daemon stopped" in d.stderr(), "the daemon must finish its run"
    assert calls(tmp_path, victim) == MAX_ATTEMPTS
    err = json.loads((events_dir(sp, "dead") / f"{victim}.error").read_text())
    assert err["reason"] == "attempts_exhausted"
    expected = {"sysexit": "SystemExit: 3", "sysexit0": "SystemExit", "keyboard": "KeyboardInterrupt"}[how]
    assert err["error"] == expected and len(err["history"]) == MAX_ATTEMPTS
    ok = [e.id for e in read_effects(tmp_path / "effects.txt") if e.ok]
    assert sorted(ok) == sorted(set(ids) - {victim})
    assert ok.index(doomed[1]) < ok.index(doomed[2])
    failures = [ln for ln in d.stderr().splitlines() if "handler failed" in ln and f'"event_id":"{victim}"' in ln]
    assert len(failures) == MAX_ATTEMPTS, d.stderr()
    assert '"handler":"enders"' in failures[0] and '"type":"function.execution"' in failures[0]


def test_sigint_to_the_daemon_still_stops_it_gracefully(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """A real SIGINT (not a handler's KeyboardInterrupt) still stops the daemon with exit 0, losing nothing."""
    ids = emit_executions(sp, ["fa", "fb"], 20)
    (tmp_path / "enders.txt").write_text("")
    env = {"EFFECTS_FILE": str(tmp_path / "effects.txt"), "ENDER_IDS_FILE": str(tmp_path / "enders.txt")}
    cfg = write_config(tmp_path, workers=1, rescan_interval=30.0)
    d = daemons.start(sp, cfg, handlers=[ENDERS], env=env)
    wait_for(lambda: ids_in(sp, "processed") == set(ids), "the backlog to be handled", procs=[d])
    d.signal(signal.SIGINT)
    assert d.wait() == 0, d.stderr()
    assert "daemon stopped" in d.stderr()
    assert ids_in(sp, "dead") == set()


# -- the running slots, read back as recovery reads them ---------------------------------------
EID = "01a22630-13ef-7170-9e87-3a1e0f6f0fee"
CHECKSUM = "sha256:" + "ab" * 32


def test_a_running_slot_left_set_reads_back_as_a_died_attempt(tmp_path: Path) -> None:
    """A handler still marked running in a dead owner's journal is one failed attempt with the DIED error."""
    j = Journal(tmp_path, slots=3)
    j.done(EID, "first", CHECKSUM)
    j.running(2, EID, "second", CHECKSUM, 2)
    rec = journal_record(read_journal(tmp_path / JOURNAL), EID, CHECKSUM)
    assert rec is not None and rec.done == {"first"}
    assert [(a.handler, a.attempt, a.error) for a in rec.failures] == [("second", 2, DIED)]
    j.idle(2)
    rec = journal_record(read_journal(tmp_path / JOURNAL), EID, CHECKSUM)
    assert rec is not None and rec.failures == [], "a handler that returned leaves nothing behind"
    j.close()


def test_truncating_the_journal_keeps_the_slots(tmp_path: Path) -> None:
    """Forgetting the lines (nothing in flight) keeps the slots working, and lines after it still parse."""
    j = Journal(tmp_path, slots=1)
    j.done(EID, "first", CHECKSUM)
    j.truncate()
    j.running(0, EID, "h", CHECKSUM, 1)
    j.done(EID, "other", CHECKSUM)
    rec = journal_record(read_journal(tmp_path / JOURNAL), EID, CHECKSUM)
    assert rec is not None and rec.done == {"other"} and [a.error for a in rec.failures] == [DIED]
    j.close()


def test_torn_slot_and_old_journals_are_read_safely(tmp_path: Path) -> None:
    """A slot marked set but not parseable is ignored; a journal without slots (older daemon) still parses."""
    j = Journal(tmp_path, slots=1)
    j.running(0, EID, "h", CHECKSUM, 1)
    j.close()
    data = bytearray((tmp_path / JOURNAL).read_bytes())
    data[70:80] = b"\0" * 10  # damage the slot's JSON
    assert parse_journal(bytes(data)) == {}
    old = b"D\t" + json.dumps([EID, "h", CHECKSUM]).encode() + b"\n"
    assert parse_journal(old)[(EID, CHECKSUM)].done == {"h"}
