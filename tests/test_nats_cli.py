"""NATS mode through the CLI, on a real nats-server: setup, emit --mode nats, daemon --mode nats, dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nats_cli_helpers import cli, project, server
from tests.natsserver import NatsServer

__all__ = ["project", "server"]  # the fixtures, imported for pytest


def test_setup_is_idempotent_and_dry_run_changes_nothing(project: Path, server: NatsServer) -> None:
    """--dry-run lists what it would create and creates nothing; setup creates; a second setup changes nothing."""
    dry = cli(["nats", "setup", "--dry-run"], project, server.url)
    assert dry.returncode == 0, dry.stderr
    assert "would change" in dry.stdout and "  + stream POET" in dry.stdout
    again = cli(["nats", "setup", "--dry-run"], project, server.url)
    assert "  + stream POET" in again.stdout  # still missing: the dry run created nothing
    made = cli(["nats", "setup"], project, server.url)
    assert made.returncode == 0 and "  + consumer POET/poet-p3" in made.stdout
    same = cli(["nats", "setup"], project, server.url)
    assert same.returncode == 0 and "0 changed" in same.stdout and "+" not in same.stdout.split("\n", 1)[1]


def test_setup_shows_a_changed_setting(project: Path, server: NatsServer) -> None:
    """Changing [nats] duplicate_window shows as an update of the stream (old -> new) in the dry run."""
    assert cli(["nats", "setup"], project, server.url).returncode == 0
    toml = project / "poet.toml"
    toml.write_text(toml.read_text().replace("[nats]\n", '[nats]\nduplicate_window = "5m"\n'))
    dry = cli(["nats", "setup", "--dry-run"], project, server.url)
    assert "~ stream POET (duplicate_window: 120.0 -> 300.0)" in dry.stdout


def test_unreachable_server_is_a_clear_error(project: Path) -> None:
    """No server at POET_NATS_URL: one line naming the server, exit 69, no traceback."""
    r = cli(
        ["emit", "--mode", "nats", "system.health", '{"service": "s", "status": "healthy"}'],
        project,
        "nats://127.0.0.1:1",
    )
    assert r.returncode == 69 and "cannot connect to NATS at nats://127.0.0.1:1" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["emit", "--mode", "nats", "system.health", '{"service": "s", "status": "healthy"}'],
        ["daemon", "--mode", "nats", "--once"],
        ["nats", "setup"],
        ["dead", "list", "--mode", "nats"],
    ],
    ids=["emit", "daemon", "setup", "dead"],
)
def test_unreachable_server_leaves_no_asyncio_noise(project: Path, args: list[str]) -> None:
    """After the unreachable-server error, stderr holds that one line: no pending task, no unclosed loop."""
    e = {**os.environ, "POET_NATS_URL": "nats://127.0.0.1:1"}
    r = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-m", "poetctl", *args],
        cwd=project,
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 69
    assert r.stderr.splitlines() == [r.stderr.splitlines()[0]] and "cannot connect to NATS" in r.stderr, r.stderr


HANDLERS = """
import json, os
def register(router):
    log = os.environ["POET_TEST_LOG"]
    def seen(event):
        with open(log, "a") as fh:
            fh.write(json.dumps([event.id, event.correlation_id]) + "\\n")
        if event.payload.get("status") == "unhealthy":
            raise ValueError("poison " + event.id)
    router.subscribe("system.health", seen, name="seen")
"""


def test_emit_and_daemon_in_nats_mode_with_a_dead_letter(project: Path, server: NatsServer) -> None:
    """emit --mode nats prints the id; daemon --mode nats --once handles it; a poison event is dead after 3 attempts."""
    assert cli(["nats", "setup"], project, server.url).returncode == 0
    (project / "h.py").write_text(HANDLERS)
    ok = cli(["emit", "--mode", "nats", "system.health", '{"service": "s", "status": "healthy"}'], project, server.url)
    assert ok.returncode == 0, ok.stderr
    good = ok.stdout.strip()
    bad = cli(
        ["emit", "system.health", '{"service": "s", "status": "unhealthy"}'], project, server.url, POET_MODE="nats"
    )
    assert bad.returncode == 0, bad.stderr
    poison = bad.stdout.strip()
    log = project / "seen.log"
    d = cli(
        ["daemon", "--mode", "nats", "--once", "--handlers", str(project / "h.py"), "--workers", "1"],
        project,
        server.url,
        POET_TEST_LOG=str(log),
    )
    assert d.returncode == 1, d.stderr  # something was dead-lettered
    seen = [json.loads(line)[0] for line in log.read_text().splitlines()]
    assert seen.count(good) == 1 and seen.count(poison) == 3

    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport
    from poetctl.transport import State

    t = NatsTransport(NatsSettings(servers=(server.url,), partitions=4))
    try:
        assert t.state_of(good) == State.PROCESSED
        got = t.get(poison)
        assert got is not None and got.state == State.DEAD and got.info is not None
        assert got.info["attempts"] == 3 and got.info["error"] == f"ValueError: poison {poison}"
        st = t.raw_state(poison)
        assert st is not None
        msg = t.link.run(t.link.jsm.get_msg("POET_DEAD", seq=int(st["dseq"])))
        assert msg.headers["Poet-Attempts"] == "3" and msg.headers["Poet-Error"] == f"ValueError: poison {poison}"
        assert json.loads(msg.data)["id"] == poison
    finally:
        t.close()


def test_local_emit_does_not_import_nats(tmp_path: Path) -> None:
    """emit in local_only mode never imports the nats client."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['poetctl', 'emit', '--init', 'system.health', '{\"service\": \"s\", \"status\": \"healthy\"}']\n"
        "try:\n    runpy.run_module('poetctl', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "assert not any(m == 'nats' or m.startswith('nats.') for m in sys.modules), 'nats imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
