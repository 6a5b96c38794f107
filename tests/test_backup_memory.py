"""backup streams: the backup process's peak RSS does not grow with the size of what it archives (spool and NATS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from poetctl import EventRouter
from tests.nats_cli_helpers import cli, project, server
from tests.natsserver import NatsServer

__all__ = ["project", "server"]  # the fixtures, imported for pytest

# The payload: N events of BODY bytes each (random hex: zstd shrinks it to half, no further).
N = int(os.environ.get("POET_TEST_BACKUP_MEMORY_EVENTS", "1500"))
BODY = 32 * 1024
TOTAL_MB = N * BODY / 2**20  # ~47 MB by default
BOUND_MB = TOTAL_MB / 3  # what the backup may grow by over a near-empty one: well under one copy of the bodies


def payloads(lo: int, hi: int) -> list[tuple[str, dict[str, str]]]:
    return [
        ("system.health", {"service": f"s{i}", "status": "healthy", "host": os.urandom(BODY // 2).hex()})
        for i in range(lo, hi)
    ]


# A child's ru_maxrss starts at its parent's at fork (Linux keeps the high-water mark across exec), so pytest's
# own RSS would hide the backup's: a small wrapper process runs the command and reports its children's peak.
WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def peak_rss_mb(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run ``cmd`` to its end; its peak resident set in MB (getrusage of the children of a small wrapper)."""
    with open(cwd / "rss.err", "wb") as err:
        p = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err)
    assert p.returncode == 0, (cwd / "rss.err").read_text()
    return int(p.stdout.split()[-1]) / 1024  # KB on Linux


def test_spool_backup_memory_does_not_grow_with_the_spool(tmp_path: Path) -> None:
    """`poetctl backup` of a ~47 MB spool, and its restore, peak within a third of that over those of 2 events."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
    small, big = tmp_path / "small", tmp_path / "big"
    EventRouter(spool=small).emit_many(payloads(0, 2))
    r = EventRouter(spool=big)
    for lo in range(0, N, 250):
        r.emit_many(payloads(lo, min(N, lo + 250)))
    base = peak_rss_mb([sys.executable, "-m", "poetctl", "backup", "--spool", str(small), "s.tar.zst"], tmp_path, env)
    peak = peak_rss_mb([sys.executable, "-m", "poetctl", "backup", "--spool", str(big), "b.tar.zst"], tmp_path, env)
    assert (tmp_path / "b.tar.zst").stat().st_size > TOTAL_MB * 2**20 * 0.45  # the bodies really are in it
    assert peak - base < BOUND_MB, f"backup grew by {peak - base:.1f} MB for {TOTAL_MB:.0f} MB of events"
    # Restore reads the archive twice (verify, then write), holding one member at a time.
    restore = [sys.executable, "-m", "poetctl", "restore"]
    base = peak_rss_mb([*restore, "s.tar.zst", "--spool", str(tmp_path / "s2")], tmp_path, env)
    peak = peak_rss_mb([*restore, "b.tar.zst", "--spool", str(tmp_path / "b2")], tmp_path, env)
    assert len(list((tmp_path / "b2" / "events" / "pending").glob("*.json"))) == N
    assert peak - base < BOUND_MB, f"restore grew by {peak - base:.1f} MB for {TOTAL_MB:.0f} MB of events"


def test_nats_backup_memory_does_not_grow_with_the_stream(project: Path, server: NatsServer, tmp_path: Path) -> None:
    """`backup --mode nats` of a ~47 MB stream, and its restore, peak within a third of that over those of 2 events."""
    from poetctl.cli.mode import nats_transport
    from poetctl.config import load_config

    assert cli(["nats", "setup"], project, server.url).returncode == 0
    env = {**os.environ, "POET_NATS_URL": server.url}
    base = peak_rss_mb(
        [sys.executable, "-m", "poetctl", "backup", "--mode", "nats", str(tmp_path / "e.tar.zst")], project, env
    )
    os.environ["POET_NATS_URL"] = server.url
    try:
        t = nats_transport(load_config(project / "poet.toml"))
    finally:
        del os.environ["POET_NATS_URL"]
    try:
        r = EventRouter(transport=t, config=load_config(project / "poet.toml"))
        r.emit_many(payloads(0, 2))
        small = peak_rss_mb(
            [sys.executable, "-m", "poetctl", "backup", "--mode", "nats", str(tmp_path / "s.tar.zst")], project, env
        )
        for lo in range(2, N, 100):
            r.emit_many(payloads(lo, min(N, lo + 100)))
    finally:
        t.close()
    peak = peak_rss_mb(
        [sys.executable, "-m", "poetctl", "backup", "--mode", "nats", str(tmp_path / "b.tar.zst")], project, env
    )
    assert (tmp_path / "b.tar.zst").stat().st_size > TOTAL_MB * 2**20 * 0.45
    base = max(base, small)
    assert peak - base < BOUND_MB, f"backup grew by {peak - base:.1f} MB for {TOTAL_MB:.0f} MB of events"
    # Restore into a wiped server: verified in a first pass, then published a batch (about 2 MB) at a time.
    from poetctl.backends.nats.settings import NatsSettings
    from tests.contract.kits import wipe_nats

    restore = [sys.executable, "-m", "poetctl", "restore", "--mode", "nats"]
    wipe_nats(NatsSettings(servers=(server.url,)))
    base = peak_rss_mb([*restore, str(tmp_path / "s.tar.zst")], project, env)
    wipe_nats(NatsSettings(servers=(server.url,)))
    peak = peak_rss_mb([*restore, str(tmp_path / "b.tar.zst")], project, env)
    assert peak - base < BOUND_MB, f"restore grew by {peak - base:.1f} MB for {TOTAL_MB:.0f} MB of events"


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KB and /proc: Linux")
