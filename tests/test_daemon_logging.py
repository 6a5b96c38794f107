"""The daemon's stderr log: one line per handler failure, dead letter, quarantine and recovery,
with event id, type, handler and reason; ``-q``/``-v`` set the detail; never a payload."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers.harness import (
    FOREVER_S,
    Daemons,
    daemon_args,
    emit_executions,
    events_dir,
    execution_payload,
    ids_in,
    inflight_ids,
    run_cli,
    wait_for,
    write_config,
)

from poetctl import EventRouter

MARKER = "s3cr3t-payload-value"


def _spool_with_trouble(tmp_path: Path, sp: Path) -> tuple[str, str, dict[str, str]]:
    """One event whose handler always fails (its payload carries MARKER), one corrupt file, one good event."""
    router = EventRouter(spool=sp)
    payload = execution_payload("fa")
    payload["execution_id"] = f"exec-{MARKER}"
    failing = router.emit("function.execution", payload)
    emit_executions(sp, ["fb"], 1)
    corrupt = "0190a5b4-0000-7000-8000-000000000001"
    (events_dir(sp, "pending") / f"{corrupt}.json").write_text("{not json")
    (tmp_path / "fail.txt").write_text(f"{failing} always\n")
    env = {"EFFECTS_FILE": str(tmp_path / "effects.txt"), "FAIL_IDS_FILE": str(tmp_path / "fail.txt")}
    return failing, corrupt, env


def _run(tmp_path: Path, sp: Path, env: dict[str, str], *flags: str) -> tuple[int, list[str]]:
    """``daemon --once`` with ``flags`` until nothing is left in pending (retries are handed back
    between runs); the last exit code and every log line."""
    args = daemon_args(sp, write_config(tmp_path, max_attempts=3), once=True)
    lines: list[str] = []
    for _ in range(100):
        r = run_cli(tmp_path, *args[:1], *flags, *args[1:], env=env)
        lines += r.stderr.splitlines()
        if not ids_in(sp, "pending"):
            return r.returncode, lines
    raise AssertionError(f"still waiting for retries after 100 runs:\n{lines}")


def test_failures_dead_letters_and_quarantines_are_logged_one_line_each(tmp_path: Path, sp: Path) -> None:
    """Each failure, the dead letter and the quarantine get one line with id, type, handler and reason."""
    failing, corrupt, env = _spool_with_trouble(tmp_path, sp)
    code, lines = _run(tmp_path, sp, env)
    assert code == 1, lines
    fails = [ln for ln in lines if "handler failed" in ln]
    assert len(fails) == 3, lines
    for n, ln in enumerate(fails, 1):
        assert f"event={failing}" in ln and "type=function.execution" in ln and "handler=effects" in ln
        assert "RuntimeError: planned failure" in ln and f"attempt={n}/3" in ln
    dead = [ln for ln in lines if "dead-lettered" in ln]
    assert len(dead) == 1 and f"event={failing}" in dead[0] and "reason=attempts_exhausted" in dead[0]
    assert "handler=effects" in dead[0] and "type=function.execution" in dead[0]
    quarantined = [ln for ln in lines if "quarantined" in ln]
    assert len(quarantined) == 1 and f"{corrupt}.json" in quarantined[0] and "reason=bad_json" in quarantined[0]
    assert all(ln.startswith("poetctl: ") for ln in lines), lines
    assert sum("quarantined" in ln for ln in lines) == 1


@pytest.mark.parametrize("flags", [(), ("-v",), ("-vv",)], ids=["default", "v", "vv"])
def test_log_never_shows_payloads(tmp_path: Path, sp: Path, flags: tuple[str, ...]) -> None:
    """No payload content reaches the log, at any verbosity."""
    _, _, env = _spool_with_trouble(tmp_path, sp)
    code, lines = _run(tmp_path, sp, env, *flags)
    assert code == 1, lines
    assert not any(MARKER in ln for ln in lines)


def test_quiet_keeps_only_dead_letters_and_quarantines(tmp_path: Path, sp: Path) -> None:
    """-q drops retries and start/stop lines but keeps what left the normal path (dead, corrupt)."""
    _, _, env = _spool_with_trouble(tmp_path, sp)
    code, lines = _run(tmp_path, sp, env, "-q")
    assert code == 1, lines
    assert not any("handler failed" in ln or "daemon stopped" in ln for ln in lines), lines
    assert sum("dead-lettered" in ln for ln in lines) == 1
    assert sum("quarantined" in ln for ln in lines) == 1


def test_verbose_adds_the_traceback_of_a_failure(tmp_path: Path, sp: Path) -> None:
    """-v adds where the handler failed (the traceback's last line) to each failure line."""
    _, _, env = _spool_with_trouble(tmp_path, sp)
    _, plain = _run(tmp_path, sp, env)
    sp2 = tmp_path / "spool2"
    _, _, env = _spool_with_trouble(tmp_path, sp2)
    _, verbose = _run(tmp_path, sp2, env, "-v")
    assert not any("effects.py" in ln for ln in plain if "handler failed" in ln)
    assert all("effects.py" in ln for ln in verbose if "handler failed" in ln)


def test_control_characters_in_errors_are_escaped(tmp_path: Path, sp: Path) -> None:
    """A handler error with terminal escapes is logged with the escapes made visible."""
    mod = tmp_path / "evil.py"
    mod.write_text(
        "def register(router):\n"
        "    def h(e):\n"
        "        raise RuntimeError('\\x1b]0;owned\\x07\\x1b[2J')\n"
        "    router.subscribe('function.*', h, name='evil')\n"
    )
    emit_executions(sp, ["fa"], 1)
    r = run_cli(tmp_path, *daemon_args(sp, write_config(tmp_path, max_attempts=1), [mod], once=True))
    assert r.returncode == 1, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert "\\x1b]0;owned" in r.stderr


def test_recovery_is_logged(tmp_path: Path, sp: Path, daemons: Daemons) -> None:
    """A daemon that returns a dead daemon's in-flight events to pending says how many and whose."""
    ids = emit_executions(sp, ["fa", "fb"], 2)
    cfg = write_config(tmp_path, workers=2)
    env = {"EFFECTS_FILE": str(tmp_path / "effects.txt"), "SLEEP_S": FOREVER_S}  # still running at the kill
    d = daemons.start(sp, cfg, env=env)
    wait_for(lambda: inflight_ids(sp), "claimed events", procs=[d])
    d.kill()
    stuck = inflight_ids(sp)
    r = run_cli(tmp_path, *daemon_args(sp, cfg, once=True), env={"EFFECTS_FILE": str(tmp_path / "effects.txt")})
    assert r.returncode == 0, r.stderr
    rec = [ln for ln in r.stderr.splitlines() if "recovered in-flight events" in ln]
    assert len(rec) == 1 and f"events={len(stuck)}" in rec[0], r.stderr
    assert ids_in(sp, "processed") == set(ids)
