"""Daemon promises about input it cannot use: unreadable events, validation settings, bad
subscriptions, and the log lines that say what happened."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers.harness import (
    EFFECTS,
    DaemonProc,
    argv,
    clean_env,
    daemon_args,
    emit_executions,
    events_dir,
    ids_in,
    read_effects,
    run_cli,
    run_once,
    wait_for,
    write_config,
)
from privileges import drop_caps

from poetctl import EventRouter
from poetctl.backends.fs import reader
from poetctl.backends.fs.reader import CorruptEvent, UnreadableEvent, read_bytes
from poetctl.errors import UsageError


def effects_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"EFFECTS_FILE": str(tmp_path / "effects.txt"), **extra}


# -- unreadable events ------------------------------------------------------------------------
def make_unreadable(path: Path) -> Callable[[], None] | None:
    """Make ``path`` unreadable to the daemon; returns the preexec the daemon must run with."""
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # another user's file, 0600: not ours to read
        os.chmod(path, 0o600)
        return drop_caps  # modes then bind for uid 0 too (tests/privileges.py)
    os.chmod(path, 0)
    return None


def start_daemon(
    tmp_path: Path, sp: Path, cfg: Path, env: dict[str, str], preexec: Callable[[], None] | None, once: bool
) -> DaemonProc:
    log = tmp_path / f"daemon-{len(list(tmp_path.glob('daemon-*.log')))}.log"
    with open(log, "wb") as err:
        p = subprocess.Popen(
            argv(*daemon_args(sp, cfg, [EFFECTS], once=once)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=clean_env(env),
            cwd=tmp_path,
            preexec_fn=preexec,
        )
    return DaemonProc(p, log)


def _check_premise(path: Path, preexec: Callable[[], None] | None) -> None:
    """The file really is unreadable to a process started like the daemon."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(path)!r}, 'rb')"],
            preexec_fn=preexec,
            capture_output=True,
            check=False,
        )
    except subprocess.SubprocessError as exc:  # no CAP_SETPCAP (some containers)
        pytest.skip(f"cannot start a process that obeys file modes here: {exc}")
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr, probe.stderr


@pytest.mark.parametrize("workers", [1, 3], ids=["inline", "threads"])
def test_unreadable_event_is_reported_once_and_left_in_pending(tmp_path: Path, sp: Path, workers: int) -> None:
    """EACCES on an event: one stderr line for the file (not per scan), the file stays in pending, the rest runs."""
    router = EventRouter(spool=sp)
    ids = emit_executions(sp, ["fa", "fb"], 3)
    locked = router.emit("function.execution", _payload("fc"))
    locked_path = events_dir(sp, "pending") / f"{locked}.json"
    preexec = make_unreadable(locked_path)
    _check_premise(locked_path, preexec)
    cfg = write_config(tmp_path, workers=workers, rescan_interval=0.1)
    env = effects_env(tmp_path)
    d = start_daemon(tmp_path, sp, cfg, env, preexec, once=False)
    try:
        wait_for(lambda: ids_in(sp, "processed") >= set(ids), "the readable events", procs=[d])
        # Each new event is handled only after a listing that also met the unreadable file.
        for n in range(3):
            eid = router.emit("function.execution", _payload(f"later{n}"))
            wait_for(lambda eid=eid: eid in ids_in(sp, "processed"), f"later event {n}", procs=[d])
    finally:
        d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.stderr()
    lines = [ln for ln in d.stderr().splitlines() if locked in ln]
    assert len(lines) == 1, f"expected one line about {locked}, got:\n{d.stderr()}"
    assert "unreadable" in lines[0] and "Permission denied" in lines[0]
    assert ids_in(sp, "pending") == {locked}, "the unreadable file must stay in pending/"
    assert not any(events_dir(sp, "corrupt").iterdir()), "nothing is quarantined for a permission error"


def test_unreadable_event_makes_once_exit_75(tmp_path: Path, sp: Path) -> None:
    """daemon --once handles the readable events and exits 75 (try again) while one is unreadable."""
    router = EventRouter(spool=sp)
    ids = emit_executions(sp, ["fa"], 2)
    locked = router.emit("function.execution", _payload("fc"))
    preexec = make_unreadable(events_dir(sp, "pending") / f"{locked}.json")
    _check_premise(events_dir(sp, "pending") / f"{locked}.json", preexec)
    d = start_daemon(tmp_path, sp, write_config(tmp_path), effects_env(tmp_path), preexec, once=True)
    assert d.wait() == 75, d.stderr()
    assert ids_in(sp, "processed") == set(ids) and ids_in(sp, "pending") == {locked}
    assert "unreadable" in d.stderr()


def test_read_bytes_names_permission_errors_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_bytes: EACCES/EPERM raise UnreadableEvent (reason unreadable); a symlink is still not_regular."""
    target = tmp_path / "t.json"
    target.write_bytes(b"{}")
    link = tmp_path / "l.json"
    link.symlink_to(target)
    with pytest.raises(CorruptEvent) as info:
        read_bytes(link, 1024)
    assert info.value.reason == "not_regular" and not isinstance(info.value, UnreadableEvent)
    real_open = os.open
    for code in (errno.EACCES, errno.EPERM):

        def deny(path: object, flags: int, *a: object, code: int = code, **kw: object) -> int:
            if str(path).endswith("t.json"):
                raise OSError(code, os.strerror(code))
            return real_open(path, flags, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(reader.os, "open", deny)
        with pytest.raises(UnreadableEvent) as denied:
            read_bytes(target, 1024)
        assert denied.value.reason == "unreadable" and os.strerror(code) in denied.value.detail
        monkeypatch.setattr(reader.os, "open", real_open)


def _payload(fn: str) -> dict[str, object]:
    from daemon_helpers.harness import execution_payload

    return execution_payload(fn)


# -- validation setting ---------------------------------------------------------------------------


def bad_payload(tmp_path: Path) -> Path:
    """A function.execution payload without its required fields."""
    p = tmp_path / "bad.json"
    p.write_text('{"function_name": "fz"}')
    return p


@pytest.mark.parametrize("where", ["env", "toml"])
def test_validation_off_daemon_handles_what_emit_accepted(tmp_path: Path, sp: Path, where: str) -> None:
    """With validation off (POET_VALIDATION or poet.toml), emit and daemon agree: the event is handled."""
    cfg = write_config(tmp_path)
    env = effects_env(tmp_path)
    if where == "env":
        env["POET_VALIDATION"] = "false"
    else:
        cfg.write_text(cfg.read_text() + "[event_schemas]\nvalidation = false\n")
    r = run_cli(tmp_path, "emit", "--spool", sp, "--config", cfg, "function.execution", bad_payload(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    eid = r.stdout.strip()
    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode == 0, r.stderr
    assert ids_in(sp, "processed") == {eid}
    assert not any(events_dir(sp, "corrupt").iterdir())
    assert [e.id for e in read_effects(tmp_path / "effects.txt") if e.ok] == [eid]


def test_validation_on_refuses_at_emit_and_quarantines_on_disk(tmp_path: Path, sp: Path) -> None:
    """With validation on, emit refuses the payload (65) and the daemon quarantines such a file as bad_schema."""
    cfg = write_config(tmp_path)
    env = effects_env(tmp_path)
    r = run_cli(tmp_path, "emit", "--spool", sp, "--config", cfg, "function.execution", bad_payload(tmp_path), env=env)
    assert r.returncode == 65, r.stderr
    off = {**env, "POET_VALIDATION": "false"}
    r = run_cli(tmp_path, "emit", "--spool", sp, "--config", cfg, "function.execution", bad_payload(tmp_path), env=off)
    eid = r.stdout.strip()
    r = run_once(tmp_path, sp, cfg, env=env)
    assert r.returncode == 1, r.stderr
    reason = json.loads((events_dir(sp, "corrupt") / f"{eid}.json.reason").read_text())
    assert reason["reason"] == "bad_schema"


def test_validation_off_still_checks_checksum_and_type(tmp_path: Path, sp: Path) -> None:
    """Validation off skips payload schemas only: a bad checksum or an unknown type is still quarantined."""
    env = {**effects_env(tmp_path), "POET_VALIDATION": "false"}
    router = EventRouter(spool=sp)
    tampered = router.emit("function.execution", _payload("fa"))
    p = events_dir(sp, "pending") / f"{tampered}.json"
    doc = json.loads(p.read_text())
    doc["payload"]["function_name"] = "fb"
    p.write_text(json.dumps(doc))
    unknown = router.emit("function.execution", _payload("fa"))
    q = events_dir(sp, "pending") / f"{unknown}.json"
    doc = json.loads(q.read_text())
    doc["type"] = "no.such_type"
    from poetctl.event import compute_checksum

    doc["checksum"] = compute_checksum(doc)
    q.write_text(json.dumps(doc))
    r = run_once(tmp_path, sp, write_config(tmp_path), env=env)
    assert r.returncode == 1, r.stderr
    reasons = {
        json.loads((events_dir(sp, "corrupt") / f"{i}.json.reason").read_text())["reason"] for i in (tampered, unknown)
    }
    assert reasons == {"bad_checksum", "unknown_type"}


# -- subscriptions -----------------------------------------------------------------------------------------
BAD_PATTERNS = ["[", "", "drift..x", ".drift", "drift.", "Drift.*", "drift", "drift.[ab]", "a b.c", "drift/x", "x.y?"]
GOOD_PATTERNS = ["*", "drift.*", "function.execution", "*.completed", "feedback.*_validation", "**"]
BAD_NAMES = ["../x", "", "a/b", ".hidden", "x\ny", "a b", "x" * 201, "a\\b", "\x1b[2J"]
GOOD_NAMES = ["pagerduty", "log-drift", "poet.human_validation", "mod.register.<locals>.<lambda>", "a:b@2"]


@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_subscribe_refuses_patterns_that_cannot_match(tmp_path: Path, pattern: str) -> None:
    """router.subscribe raises UsageError for a pattern that is malformed or can never match a type."""
    router = EventRouter(spool=tmp_path / "s")
    with pytest.raises(UsageError, match="pattern"):
        router.subscribe(pattern, lambda e: None, name="h")
    assert router.subscriptions == []


@pytest.mark.parametrize("name", BAD_NAMES)
def test_subscribe_refuses_unsafe_handler_names(tmp_path: Path, name: str) -> None:
    """router.subscribe raises UsageError for a handler name that is not a safe record key."""
    router = EventRouter(spool=tmp_path / "s")
    with pytest.raises(UsageError, match="handler name"):
        router.subscribe("drift.*", lambda e: None, name=name)
    assert router.subscriptions == []


def test_subscribe_accepts_good_patterns_and_names(tmp_path: Path) -> None:
    """Type globs and the usual handler names (default module.qualname included) are accepted."""
    router = EventRouter(spool=tmp_path / "s")
    for p in GOOD_PATTERNS:
        router.subscribe(p, lambda e: None, name="h")
    for n in GOOD_NAMES:
        router.subscribe("drift.*", lambda e: None, name=n)
    router.subscribe("drift.*", lambda e: None)  # default name: module.<locals>.<lambda>
    assert len(router.subscriptions) == len(GOOD_PATTERNS) + len(GOOD_NAMES) + 1


def test_subscribe_refuses_an_unstable_default_name(tmp_path: Path) -> None:
    """A callable without a stable qualname (functools.partial) needs an explicit name."""
    import functools

    router = EventRouter(spool=tmp_path / "s")
    with pytest.raises(UsageError, match="name="):
        router.subscribe("drift.*", functools.partial(print, "x"))


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        ("router.subscribe('[', lambda e: None, name='h')", "'['"),
        ("router.subscribe('drift.*', print, name='../x')", "'../x'"),
    ],
    ids=["pattern", "name"],
)
def test_daemon_refuses_a_handler_module_with_a_bad_subscription(
    tmp_path: Path, sp: Path, call: str, shown: str
) -> None:
    """daemon --handlers exits 2 with one line naming the module and the bad value; nothing is handled."""
    mod = tmp_path / "badsub.py"
    mod.write_text(f"def register(router):\n    {call}\n")
    emit_executions(sp, ["fa"], 1)
    r = run_cli(tmp_path, *daemon_args(sp, write_config(tmp_path), [mod], once=True))
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "badsub.py" in lines[0] and shown in lines[0]
    assert ids_in(sp, "processed") == set()
