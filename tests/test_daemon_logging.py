"""The daemon's stderr log: one record per line for each handler failure, dead letter, quarantine
and recovery, with event id, type, handler and reason; JSON lines in a pipe, the readable form with
``--log-format console``; ``-q``/``-v``/``--log-level`` set the detail; never a payload or a secret."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def records(lines: list[str]) -> list[dict[str, Any]]:
    """Every line parsed as one JSON object with ts, level and msg (fails on any other line)."""
    out = []
    for ln in lines:
        rec = json.loads(ln)
        assert isinstance(rec, dict) and TS.match(rec["ts"]), ln
        assert rec["level"] in ("ERROR", "WARN", "INFO", "DEBUG") and isinstance(rec["msg"], str), ln
        out.append(rec)
    return out


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
    """Each failure, the dead letter and the quarantine are one JSON line with id, type, handler, reason."""
    failing, corrupt, env = _spool_with_trouble(tmp_path, sp)
    code, lines = _run(tmp_path, sp, env)
    assert code == 1, lines
    recs = records(lines)
    fails = [r for r in recs if r["msg"] == "handler failed"]
    assert len(fails) == 3, lines
    for n, r in enumerate(fails, 1):
        assert r["level"] == "WARN" and r["event_id"] == failing and r["type"] == "function.execution"
        assert r["handler"] == "effects" and r["attempt"] == n and r["max_attempts"] == 3
        assert "RuntimeError: planned failure" in r["error"]
    dead = [r for r in recs if r["msg"] == "dead-lettered"]
    assert len(dead) == 1 and dead[0]["level"] == "ERROR" and dead[0]["event_id"] == failing
    assert dead[0]["reason"] == "attempts_exhausted" and dead[0]["handler"] == "effects"
    assert dead[0]["type"] == "function.execution" and dead[0]["attempt"] == 3
    quarantined = [r for r in recs if r["msg"] == "quarantined"]
    assert len(quarantined) == 1 and quarantined[0]["level"] == "ERROR"
    assert quarantined[0]["file"].endswith(f"{corrupt}.json") and quarantined[0]["reason"] == "bad_json"
    assert sum("quarantined" in ln for ln in lines) == 1


def test_console_format_is_the_readable_line(tmp_path: Path, sp: Path) -> None:
    """--log-format console: the readable ``poetctl: warning: ... key=value`` lines (no colour off a terminal)."""
    failing, _, env = _spool_with_trouble(tmp_path, sp)
    code, lines = _run(tmp_path, sp, env, "--log-format", "console")
    assert code == 1, lines
    fails = [ln for ln in lines if "handler failed" in ln]
    assert len(fails) == 3 and all(ln.startswith("poetctl: warning: handler failed") for ln in fails), lines
    assert f"event_id={failing}" in fails[0] and "handler=effects" in fails[0] and "attempt=1" in fails[0]
    assert all(ln.startswith("poetctl: ") for ln in lines) and "\x1b[" not in "".join(lines)


@pytest.mark.parametrize(
    ("how", "env"),
    [(("--log-level", "error"), {}), ((), {"POET_LOG_LEVEL": "error"}), (("--log-level", "ERROR", "-v"), {})],
    ids=["flag", "env", "flag-beats-v"],
)
def test_log_level_error_keeps_only_errors(tmp_path: Path, sp: Path, how: tuple[str, ...], env: dict[str, str]) -> None:
    """--log-level error / POET_LOG_LEVEL=error: only ERROR records (dead letter, quarantine)."""
    _, _, trouble_env = _spool_with_trouble(tmp_path, sp)
    code, lines = _run(tmp_path, sp, {**trouble_env, **env}, *how)
    assert code == 1, lines
    recs = records(lines)
    assert {r["level"] for r in recs} == {"ERROR"}, lines
    assert sorted(r["msg"] for r in recs) == ["dead-lettered", "quarantined"]


@pytest.mark.parametrize("flags", [("--log-level", "loud"), ("--log-format", "xml")], ids=["level", "format"])
def test_bad_log_options_are_usage_errors(tmp_path: Path, sp: Path, flags: tuple[str, ...]) -> None:
    """An unknown level or format is a one-line usage error (exit 2), not a traceback."""
    args = daemon_args(sp, write_config(tmp_path), once=True)
    r = run_cli(tmp_path, *args[:1], *flags, *args[1:])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert flags[1] in r.stderr


def test_secrets_in_errors_are_masked(tmp_path: Path, sp: Path) -> None:
    """A handler error quoting a URL with credentials or a token is logged with them masked."""
    mod = tmp_path / "leaky.py"
    mod.write_text(
        "def register(router):\n"
        "    def h(e):\n"
        "        raise RuntimeError('POST https://bob:hunter2@hooks.example/x?token=abc123xyz failed; "
        "Authorization: Bearer sk_live_0123456789')\n"
        "    router.subscribe('function.*', h, name='leaky')\n"
    )
    emit_executions(sp, ["fa"], 1)
    r = run_cli(tmp_path, *daemon_args(sp, write_config(tmp_path, max_attempts=1), [mod], once=True))
    assert r.returncode == 1, r.stderr
    for secret in ("hunter2", "abc123xyz", "sk_live_0123456789"):
        assert secret not in r.stderr
    errs = [rec["error"] for rec in records(r.stderr.splitlines()) if "error" in rec]
    assert errs and all("***" in e and "hooks.example" in e for e in errs)


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
    msgs = [r["msg"] for r in records(lines)]
    assert "handler failed" not in msgs and not any(m.startswith("daemon stopped") for m in msgs), lines
    assert msgs.count("dead-lettered") == 1 and msgs.count("quarantined") == 1


def test_verbose_adds_the_traceback_of_a_failure(tmp_path: Path, sp: Path) -> None:
    """-v adds where the handler failed (the traceback's last frame) to each failure record."""
    _, _, env = _spool_with_trouble(tmp_path, sp)
    _, plain = _run(tmp_path, sp, env)
    sp2 = tmp_path / "spool2"
    _, _, env = _spool_with_trouble(tmp_path, sp2)
    _, verbose = _run(tmp_path, sp2, env, "-v")
    assert not any("at" in r for r in records(plain) if r["msg"] == "handler failed")
    fails = [r for r in records(verbose) if r["msg"] == "handler failed"]
    assert fails and all("effects.py" in r["at"] for r in fails)


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
    errs = [rec["error"] for rec in records(r.stderr.splitlines()) if "error" in rec]
    assert errs and all("\\x1b]0;owned" in e for e in errs)  # visible escapes, in valid JSON


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
    rec = [x for x in records(r.stderr.splitlines()) if x["msg"] == "recovered in-flight events of dead daemons"]
    assert len(rec) == 1 and rec[0]["events"] == len(stuck) and rec[0]["level"] == "WARN", r.stderr
    assert ids_in(sp, "processed") == set(ids)
