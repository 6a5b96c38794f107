"""restore refuses a target with a daemon attached (exit 75, one line), on NATS and on the spool; nothing written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from poetctl import EventRouter
from tests.nats_cli_helpers import cli, project, server
from tests.natsserver import NatsServer

__all__ = ["project", "server"]  # the fixtures, imported for pytest


def spool_archive(tmp_path: Path, project: Path, url: str) -> Path:
    """A backup of a small spool: two pending events."""
    src = tmp_path / "src"
    EventRouter(spool=src).emit_many([("system.health", {"service": f"s{i}", "status": "healthy"}) for i in range(2)])
    archive = tmp_path / "b.tar.zst"
    r = cli(["backup", "--spool", str(src), str(archive)], project, url)
    assert r.returncode == 0, r.stderr
    return archive


def wait_for(what: str, check: object, proc: subprocess.Popen[bytes]) -> None:
    """Poll ``check()`` until true (an observed state, not a delay); fail if the daemon died meanwhile."""
    deadline = time.monotonic() + 60
    while not check():  # type: ignore[operator]
        assert proc.poll() is None, f"the daemon exited before {what}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


@pytest.fixture
def nats_daemon(project: Path, server: NatsServer) -> Iterator[subprocess.Popen[bytes]]:
    """A nats daemon attached to the (empty, set up) server: its membership entry is live."""
    from poetctl.backends.nats import status as ns
    from poetctl.cli.mode import nats_transport
    from poetctl.config import load_config

    assert cli(["nats", "setup"], project, server.url).returncode == 0
    env = {**os.environ, "POET_NATS_URL": server.url}
    cmd = [sys.executable, "-m", "poetctl", "daemon", "--mode", "nats", "--no-builtin-handlers"]
    d = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["POET_NATS_URL"] = server.url
    try:
        t = nats_transport(load_config(project / "poet.toml"))
    finally:
        del os.environ["POET_NATS_URL"]
    try:
        wait_for("its membership entry", lambda: any(k.startswith("m.") for k in t.link.run(ns.lease_entries(t))), d)
        yield d
    finally:
        t.close()
        if d.poll() is None:
            d.send_signal(signal.SIGTERM)
            d.wait(60)


def test_nats_restore_refuses_a_server_with_a_daemon_attached(
    project: Path, server: NatsServer, nats_daemon: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """restore --mode nats exits 75 naming the attached daemon and publishes nothing; after it stops, it restores."""
    archive = spool_archive(tmp_path, project, server.url)
    r = cli(["restore", "--mode", "nats", str(archive)], project, server.url)
    assert r.returncode == 75, r.stdout + r.stderr
    assert "a daemon is attached to the NATS target" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    nats_daemon.send_signal(signal.SIGTERM)
    assert nats_daemon.wait(60) == 0
    # A clean stop leaves no trace; and the refused run wrote nothing (restore wants an empty target).
    r = cli(["restore", "--mode", "nats", str(archive)], project, server.url)
    assert r.returncode == 0, r.stderr
    assert "pending=2" in r.stdout


def test_spool_restore_refuses_a_spool_with_a_daemon_attached(
    project: Path, server: NatsServer, tmp_path: Path
) -> None:
    """restore --spool NEW exits 75 while a daemon runs on NEW (even before it wrote any event), writing nothing."""
    archive = spool_archive(tmp_path, project, server.url)
    new = tmp_path / "new"
    cmd = [sys.executable, "-m", "poetctl", "daemon", "--spool", str(new), "--no-builtin-handlers"]
    d = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        beats = new / "run" / "daemons"
        wait_for("its heartbeat", lambda: beats.is_dir() and any(beats.glob("*.json")), d)
        r = cli(["restore", str(archive), "--spool", str(new)], project, server.url)
        assert r.returncode == 75, r.stdout + r.stderr
        assert "a daemon is attached to" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not list((new / "events" / "pending").glob("*.json"))
    finally:
        d.send_signal(signal.SIGTERM)
        d.wait(60)
